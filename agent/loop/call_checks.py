"""Checking a tool call before it runs: a tool that exists, arguments that parse and fit its
schema, and not the same call over and over. Each problem is a short error result the model can
act on ("argument `timezone` is required"), never an exception or a silent skip."""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from agent.loop.call_text import loads_lenient

if TYPE_CHECKING:  # the server checks calls too, and imports no Qwen-Agent
    from qwen_agent.tools.base import BaseTool

MAX_ERRORS_SHOWN = 3


@dataclass(frozen=True)
class CheckedCall:
    """A call ready to run (`arguments` set) or refused (`error` set)."""

    arguments: dict[str, Any] | None = None
    error: str = ""


def parameters_schema(tool: BaseTool) -> dict[str, Any]:
    """The tool's parameters as a JSON schema (Qwen-Agent also allows a list of params)."""
    params = tool.parameters
    if isinstance(params, dict):
        return params
    properties = {
        p["name"]: {k: v for k, v in p.items() if k not in ("name", "required")} for p in params
    }
    required = [p["name"] for p in params if p.get("required")]
    return {"type": "object", "properties": properties, "required": required}


def closest_names(name: str, names: list[str]) -> list[str]:
    """Tool names the model probably meant: same tool without its server prefix, or similar."""
    lowered = name.lower()
    exact = [n for n in names if n.lower().split("-", 1)[-1] == lowered or lowered in n.lower()]
    similar = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return list(dict.fromkeys([*exact, *similar]))[:3]


def name_error(name: str, names: list[str]) -> str:
    """Why no tool called `name` can run, and what to call instead; "" when it exists."""
    listing = ", ".join(names) or "none"
    if not name.strip():
        return (
            'Error: the tool call has no "name". Write <tool_call>{"name": <tool name>, '
            f'"arguments": {{...}}}}</tool_call> with one of: {listing}'
        )
    if name in names:
        return ""
    guesses = closest_names(name, names)
    hint = f" Did you mean {' or '.join(map(repr, guesses))}?" if guesses else ""
    return f"Error: there is no tool named {name!r}.{hint} Tools: {listing}"


def check_call(tool_name: str, raw: str | dict[str, Any], schema: dict[str, Any]) -> CheckedCall:
    """Arguments parsed leniently, small type slips fixed, and validated against `schema`."""
    try:
        arguments = raw if isinstance(raw, dict) else (loads_lenient(raw) if raw.strip() else {})
    except ValueError:
        arguments = raw
    if not isinstance(arguments, dict):
        return CheckedCall(
            error=f"Error: the arguments of {tool_name} must be a JSON object such as "
            f"{_example(schema)}, not {_short(arguments)}"
        )
    arguments = coerce_scalars(arguments, schema)
    problems = sorted(Draft202012Validator(schema).iter_errors(arguments), key=_error_order)
    if problems:
        text = "; ".join(describe(problem) for problem in problems[:MAX_ERRORS_SHOWN])
        return CheckedCall(
            error=f"Error: invalid arguments for {tool_name}: {text}. Call it again, corrected"
        )
    return CheckedCall(arguments=arguments)


def _example(schema: dict[str, Any]) -> str:
    """`{"a": ..., "b": ...}` with the schema's first few argument names."""
    names = list(schema.get("properties") or {})[:4]
    return "{" + ", ".join(f'"{name}": ...' for name in names) + "}"


def _error_order(error: ValidationError) -> tuple[int, str]:
    return (len(error.absolute_path), str(list(error.absolute_path)))


def coerce_scalars(arguments: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Strings the schema wants as numbers or booleans ("5", "true"), converted when exact."""
    properties = schema.get("properties") or {}
    fixed = dict(arguments)
    for key, value in arguments.items():
        spec = properties.get(key)
        if isinstance(value, str) and isinstance(spec, dict):
            fixed[key] = _coerce(value, spec.get("type"))
        elif isinstance(value, dict) and isinstance(spec, dict) and spec.get("type") == "object":
            fixed[key] = coerce_scalars(value, spec)
    return fixed


def _coerce(value: str, kind: Any) -> Any:
    kinds = kind if isinstance(kind, list) else [kind]
    if "string" in kinds:
        return value
    text = value.strip()
    if "integer" in kinds and text.lstrip("-").isdigit():
        return int(text)
    if "number" in kinds:
        try:
            return float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            return value
    if "boolean" in kinds and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return value


def describe(error: ValidationError) -> str:
    """One validation error in a few words, naming the argument."""
    where = ".".join(str(part) for part in error.absolute_path)
    subject = f"argument `{where}`" if where else "the arguments"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        prefix = f"{where}." if where else ""
        return f"argument `{prefix}{missing}` is required"
    if error.validator == "type":
        return f"{subject} must be {_kind(error.validator_value)}, not {_short(error.instance)}"
    if error.validator == "enum":
        options = ", ".join(_short(option) for option in error.validator_value)
        return f"{subject} must be one of {options}"
    if error.validator == "additionalProperties":
        known = ", ".join((error.schema.get("properties") or {}).keys()) or "none"
        return f"unexpected argument in {subject}: {error.message}; allowed: {known}"
    return f"{subject}: {error.message}"


def _kind(value: Any) -> str:
    names = value if isinstance(value, list) else [value]
    return " or ".join(f"an {n}" if n[0] in "aeiou" else f"a {n}" for n in names)


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RepeatGuard:
    """Counts identical calls (same name, same arguments) in a run and stops the excess."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: Counter[str] = Counter()

    def refuse(self, name: str, arguments: dict[str, Any]) -> str:
        """An error result when this exact call already ran `limit` times, else "" (counted)."""
        key = json.dumps([name, arguments], sort_keys=True, ensure_ascii=False)
        if self._counts[key] >= self.limit:
            return (
                f"Error: {name} already ran {self._counts[key]} times with these same arguments "
                "and its result is above. Do not call it again: use that result, change the "
                "arguments, or give your final answer"
            )
        self._counts[key] += 1
        return ""
