"""Hermes-style tool calls (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`) read out
of model text, leniently: plain text and JSON only, no Qwen-Agent, so the server's stream
splitter and the loop's checks share it with the loop's parser (call_parser.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import json5

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_NAME = re.compile(r'"name"\s*:\s*"([^"\\]*)"')
_ARGUMENTS = re.compile(r'"(?:arguments|parameters)"\s*:\s*', re.S)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclass(frozen=True)
class ParsedCall:
    """One call as the model wrote it: `arguments` is a dict when it parsed, else the raw text."""

    name: str
    arguments: dict[str, Any] | str

    def arguments_text(self) -> str:
        """The arguments as Qwen-Agent carries them: a JSON string (raw text if unparsed)."""
        if isinstance(self.arguments, dict):
            return json.dumps(self.arguments, ensure_ascii=False)
        return self.arguments


@dataclass(frozen=True)
class Segment:
    """A piece of model output: text, or a tool call."""

    text: str = ""
    call: ParsedCall | None = None


def loads_lenient(text: str) -> Any:
    """JSON as a small model writes it: raw newlines in strings, JSON5, unclosed brackets.

    Raises `ValueError` when nothing reasonable parses.
    """
    text = _FENCE.sub("", text.strip())
    attempts = (
        lambda t: json.loads(t, strict=False),  # control characters (newlines) inside strings
        json5.loads,
        lambda t: json.loads(_close_brackets(t), strict=False),  # a call cut off at its end
    )
    for attempt in attempts:
        try:
            return attempt(text)
        except ValueError:
            continue
    raise ValueError(f"not valid JSON: {_shorten(text)}")


def _close_brackets(text: str) -> str:
    """`text` with an open string and open brackets closed, in order."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]" and stack:
            stack.pop()
    closing = "".join(reversed(stack))
    if in_string:
        return text + '"' + closing
    return text.rstrip().rstrip(",") + closing


def parse_call_body(body: str) -> ParsedCall:
    """The name and arguments of the text between `<tool_call>` and `</tool_call>`."""
    try:
        call = loads_lenient(body)
    except ValueError:
        call = None
    if isinstance(call, dict):
        name = call.get("name")
        arguments = call.get("arguments", call.get("parameters", {}))
        return ParsedCall(name if isinstance(name, str) else "", _arguments(arguments))
    name_match = _NAME.search(body)
    arguments_match = _ARGUMENTS.search(body)
    raw = body[arguments_match.end() :].strip() if arguments_match else body.strip()
    if arguments_match and raw.endswith("}") and raw.count("}") > raw.count("{"):
        raw = raw[:-1].rstrip()  # the closing brace of the call itself
    return ParsedCall(name_match.group(1) if name_match else "", _arguments(raw))


def _arguments(value: Any) -> dict[str, Any] | str:
    """Arguments as a dict; a JSON string holding an object (double-encoded) is decoded."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            decoded = loads_lenient(value) if value.strip() else {}
        except ValueError:
            return value
        return decoded if isinstance(decoded, dict) else value
    return json.dumps(value, ensure_ascii=False)


def split_calls(text: str) -> list[Segment]:
    """Text and tool calls in the order written; text after `</tool_call>` is kept."""
    segments: list[Segment] = []
    head, *calls = text.split(CALL_OPEN)
    if head.strip():
        segments.append(Segment(text=head))
    for piece in calls:
        body, _, tail = piece.partition(CALL_CLOSE)
        if body.strip():
            segments.append(Segment(call=parse_call_body(body)))
        if tail.strip():
            segments.append(Segment(text=tail))
    return segments


def _shorten(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
