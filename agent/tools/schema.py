"""The JSON schema of a plain typed function: what the model sees of an `@tool` function.

Parameters come from the signature and type hints (`str`, `int`, `float`, `bool`, `list[...]`,
`dict`, `Literal[...]`, `X | None`); a parameter with a default is not required; descriptions
come from the docstring: its first paragraph for the tool, a Google-style `Args:` section or
reST `:param name:` lines for the parameters.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from agent.errors import PluginError

SUPPORTED_TYPES = "str, int, float, bool, list[...], dict, Literal[...] or X | None"
_SCALARS: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
_GOOGLE_ENTRY = re.compile(r"^(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_REST_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")


@dataclass(frozen=True)
class Docstring:
    """A docstring's first paragraph and its parameter descriptions."""

    summary: str
    params: dict[str, str]


@dataclass(frozen=True)
class FunctionSchema:
    """A tool's name, description and `parameters` (exactly type, properties, required)."""

    name: str
    description: str
    parameters: dict[str, Any]


def function_schema(func: Callable[..., Any], name: str | None = None) -> FunctionSchema:
    """The schema of `func`; `PluginError` names the parameter and the fix when it cannot."""
    doc = parse_docstring(inspect.getdoc(func) or "")
    try:
        hints = get_type_hints(func)
    except Exception as exc:
        raise PluginError(f"cannot read the type hints of {func.__name__}: {exc}") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(func).parameters.values():
        properties[param.name] = _parameter_schema(param, hints, doc)
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
    parameters = {"type": "object", "properties": properties, "required": required}
    return FunctionSchema(name or func.__name__, doc.summary, parameters)


def _parameter_schema(
    param: inspect.Parameter, hints: dict[str, Any], doc: Docstring
) -> dict[str, Any]:
    if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
        raise PluginError(f"parameter {param.name!r}: *args and **kwargs are not supported")
    if param.name not in hints:
        raise PluginError(f"parameter {param.name!r} has no type hint; add one ({SUPPORTED_TYPES})")
    try:
        schema = type_schema(hints[param.name])
    except TypeError:
        raise PluginError(
            f"parameter {param.name!r} has unsupported type {_type_name(hints[param.name])}; "
            f"use {SUPPORTED_TYPES}"
        ) from None
    if param.name in doc.params:
        schema["description"] = doc.params[param.name]
    if param.default is not inspect.Parameter.empty and _is_json(param.default):
        schema["default"] = param.default
    return schema


def type_schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of one type hint; `TypeError` when it has none."""
    if isinstance(hint, type) and hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        kinds = {type(arg) for arg in args}
        if len(kinds) == 1 and (kind := kinds.pop()) in _SCALARS:
            return {"type": _SCALARS[kind], "enum": list(args)}
    elif origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = type_schema(next(arg for arg in args if arg is not type(None)))
        nullable = {**inner, "type": [inner["type"], "null"]}
        if "enum" in inner:
            nullable["enum"] = [*inner["enum"], None]
        return nullable
    elif hint is list or origin is list:
        return {"type": "array", "items": type_schema(args[0])} if args else {"type": "array"}
    elif hint is dict or (origin is dict and args[0] is str):
        return {"type": "object"}
    raise TypeError(hint)


def parse_docstring(doc: str) -> Docstring:
    """The first paragraph, and parameter descriptions (Google `Args:` or reST `:param x:`)."""
    first = doc.strip().split("\n\n")[0]
    is_params = bool(first) and (_SECTION.match(first.splitlines()[0]) or first.startswith(":"))
    summary = "" if is_params else " ".join(first.split())
    return Docstring(summary, {**_rest_params(doc), **_google_params(doc)})


def _google_params(doc: str) -> dict[str, str]:
    params: dict[str, str] = {}
    section_indent: int | None = None
    entry_indent: int | None = None
    current = ""
    for line in doc.splitlines():
        indent = len(line) - len(line.lstrip())
        if section_indent is None:
            if match := _SECTION.match(line):
                section_indent = len(match.group(1))
            continue
        if not line.strip():
            continue
        if indent <= section_indent:
            break
        entry = _GOOGLE_ENTRY.match(line.strip())
        if entry and (entry_indent is None or indent <= entry_indent):
            entry_indent, current = indent, entry.group(1).lstrip("*")
            params[current] = entry.group(2).strip()
        elif current:
            params[current] = f"{params[current]} {line.strip()}".strip()
    return params


def _rest_params(doc: str) -> dict[str, str]:
    params: dict[str, str] = {}
    current = ""
    for line in doc.splitlines():
        if match := _REST_PARAM.match(line):
            current = match.group(1)
            params[current] = match.group(2).strip()
        elif current and line.strip() and not line.strip().startswith(":"):
            params[current] = f"{params[current]} {line.strip()}".strip()
        else:
            current = ""
    return params


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json(item) for item in value)
    return False


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
