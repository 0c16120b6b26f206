"""The form of a server's elicitation request: its fields, and the typed value of each answer.

An MCP elicitation schema is flat: each property is a string (with an optional format), a
number or integer (with optional bounds), a boolean, or a choice among values (`enum`, or
`oneOf` of `const`s with titles; an `array` of such for several). `form_fields` reads it;
`FormField.parse` turns what the user typed into the value the server gets, or says in one
line what to type instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

TRUE_WORDS = ("y", "yes", "true", "1", "on")
FALSE_WORDS = ("n", "no", "false", "0", "off")


@dataclass(frozen=True)
class FormField:
    """One field to ask for."""

    name: str
    kind: str  # "string", "number", "integer", "boolean", "choice" or "choices"
    title: str
    description: str
    required: bool
    choices: tuple[str, ...] = ()
    choice_titles: tuple[str, ...] = ()
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None

    def hint(self) -> str:
        """What to type, e.g. `integer, 1 to 10` or `one of: red, green`."""
        if self.kind == "boolean":
            return "yes/no"
        if self.kind in ("choice", "choices"):
            listed = ", ".join(
                f"{value} ({title})" if title and title != value else value
                for value, title in zip(self.choices, self.choice_titles, strict=True)
            )
            return ("one of: " if self.kind == "choice" else "any of, comma-separated: ") + listed
        if self.kind in ("number", "integer") and (self.minimum, self.maximum) != (None, None):
            low = "" if self.minimum is None else f"{self.minimum:g}"
            high = "" if self.maximum is None else f"{self.maximum:g}"
            return f"{self.kind}, {low or '…'} to {high or '…'}"
        return self.kind

    def parse(self, text: str) -> Any:
        """The value of `text` (None: left empty, the field is optional or has a default);
        ValueError with what to type instead."""
        text = text.strip()
        if not text:
            if self.default is not None:
                return self.default
            if self.required:
                raise ValueError(f"{self.name} is required ({self.hint()})")
            return None
        if self.kind == "boolean":
            if text.lower() in TRUE_WORDS:
                return True
            if text.lower() in FALSE_WORDS:
                return False
            raise ValueError("answer yes or no")
        if self.kind in ("number", "integer"):
            return self._number(text)
        if self.kind == "choice":
            return self._choice(text)
        if self.kind == "choices":
            return [self._choice(part) for part in text.split(",") if part.strip()]
        return text

    def _number(self, text: str) -> int | float:
        try:
            value: int | float = int(text) if self.kind == "integer" else float(text)
        except ValueError:
            wanted = "a whole number" if self.kind == "integer" else "a number"
            raise ValueError(f"type {wanted}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("type a finite number")
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            raise ValueError(f"type a {self.hint()}")
        return value

    def _choice(self, text: str) -> str:
        text = text.strip()
        for value, title in zip(self.choices, self.choice_titles, strict=True):
            if text in (value, title) or text.lower() in (value.lower(), title.lower()):
                return value
        raise ValueError(self.hint())


def form_fields(schema: dict[str, Any]) -> list[FormField]:
    """The fields of an elicitation schema, in its order; ValueError for a property of a
    kind a form cannot ask for (nested objects)."""
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    if not isinstance(properties, dict):
        raise ValueError("the form's properties are not an object")
    return [_field(str(name), prop, name in required) for name, prop in properties.items()]


def _field(name: str, prop: Any, required: bool) -> FormField:
    if not isinstance(prop, dict):
        raise ValueError(f"field {name!r} has no schema")
    kind = prop.get("type", "string")
    common: dict[str, Any] = {
        "name": name,
        "title": str(prop.get("title") or name),
        "description": str(prop.get("description") or ""),
        "required": required,
        "default": prop.get("default"),
    }
    if kind == "array":
        choices, titles = _choices(prop.get("items") or {})
        if not choices:
            raise ValueError(f"field {name!r} is a list without values to choose from")
        return FormField(kind="choices", choices=choices, choice_titles=titles, **common)
    choices, titles = _choices(prop)
    if choices:
        return FormField(kind="choice", choices=choices, choice_titles=titles, **common)
    if kind in ("number", "integer"):
        low, high = prop.get("minimum"), prop.get("maximum")
        return FormField(kind=kind, minimum=low, maximum=high, **common)
    if kind in ("string", "boolean"):
        return FormField(kind=kind, **common)
    raise ValueError(f"field {name!r} is of type {kind!r}, which a form cannot ask for")


def _choices(prop: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The values of an `enum` (titles from `enumNames`) or a `oneOf`/`anyOf` of `const`s."""
    if isinstance(prop.get("enum"), list):
        values = tuple(str(value) for value in prop["enum"])
        names = prop.get("enumNames")
        titles = (
            tuple(str(n) for n in names)
            if isinstance(names, list) and len(names) == len(values)
            else values
        )
        return values, titles
    options = prop.get("oneOf") or prop.get("anyOf") or []
    consts = [o for o in options if isinstance(o, dict) and "const" in o]
    values = tuple(str(o["const"]) for o in consts)
    return values, tuple(str(o.get("title") or o["const"]) for o in consts)
