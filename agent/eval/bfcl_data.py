"""The pinned BFCL entries (five single-turn Python categories) and their tool schemas.

The data lives in `bfcl_data/` beside this module; `bfcl_data/NOTICE.md` says where it comes
from. Each file holds one JSON object per line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")
DATA_DIR = Path(__file__).parent / "bfcl_data"

# Our category name -> BFCL's file stem (BFCL calls "simple" `simple_python`).
_FILE_STEMS = {name: f"BFCL_v4_{name}" for name in CATEGORIES} | {"simple": "BFCL_v4_simple_python"}
# BFCL type names that JSON Schema spells differently; "any" has no JSON Schema type at all.
_JSON_TYPES = {"dict": "object", "float": "number", "tuple": "array"}
# The keywords a parameter schema keeps besides type and the nested schemas; BFCL's own extra
# keys (such as "optional", already expressed by "required") are dropped.
_KEPT_KEYWORDS = (
    "description",
    "enum",
    "default",
    "required",
    "format",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
)


@dataclass(frozen=True)
class BfclEntry:
    """One BFCL test: the user turn, the functions offered and the possible answers."""

    id: str
    category: str
    messages: list[dict[str, str]]
    functions: list[dict[str, Any]]
    answers: list[dict[str, Any]] | None  # BFCL's `ground_truth`; None for irrelevance


def load_entries(categories: Sequence[str], limit: int | None = None) -> list[BfclEntry]:
    """The entries of `categories` in file order, the first `limit` of each when given."""
    for category in categories:
        check_category(category)
    entries: list[BfclEntry] = []
    for category in categories:
        rows = _read_lines(DATA_DIR / f"{_FILE_STEMS[category]}.json", limit)
        answers = _answers_by_id(category, limit)
        entries.extend(_entry(category, row, answers) for row in rows)
    return entries


def tool_schema(function: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style function (name, description, JSON Schema parameters) for a BFCL doc.

    The name is kept as BFCL spells it, dots included.
    """
    return {
        "name": function["name"],
        "description": function.get("description", ""),
        "parameters": _json_schema(function["parameters"]),
    }


def check_category(category: str) -> None:
    """Raise ValueError, naming the valid ones, unless `category` is one of CATEGORIES."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; choose from {', '.join(CATEGORIES)}")


def _read_lines(path: Path, limit: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if limit is not None and len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def _answers_by_id(category: str, limit: int | None) -> dict[str, list[dict[str, Any]]]:
    if category == "irrelevance":
        return {}
    path = DATA_DIR / "possible_answer" / f"{_FILE_STEMS[category]}.json"
    return {row["id"]: row["ground_truth"] for row in _read_lines(path, limit)}


def _entry(category: str, row: dict[str, Any], answers: dict[str, Any]) -> BfclEntry:
    return BfclEntry(
        id=row["id"],
        category=category,
        messages=row["question"][0],
        functions=row["function"],
        answers=None if category == "irrelevance" else answers[row["id"]],
    )


def _json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A BFCL parameter schema rewritten as JSON Schema, recursively."""
    result: dict[str, Any] = {}
    bfcl_type = schema.get("type")
    if bfcl_type is not None and bfcl_type != "any":
        result["type"] = _JSON_TYPES.get(bfcl_type, bfcl_type)
    result.update({key: schema[key] for key in _KEPT_KEYWORDS if key in schema})
    if "properties" in schema:
        result["properties"] = {
            name: _json_schema(sub) for name, sub in schema["properties"].items()
        }
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            result[key] = _json_schema(schema[key])
        elif key in schema:
            result[key] = schema[key]
    return result
