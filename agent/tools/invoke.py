"""Calling one tool exactly as the model would, and recording how it went."""

import json
import time
import traceback
from dataclasses import dataclass
from typing import Any

import json5
from qwen_agent.llm.schema import ContentItem
from qwen_agent.tools.base import BaseTool

from agent.errors import ToolError


@dataclass(frozen=True)
class ToolOutcome:
    """The text result of one tool call, whether it failed, and how long it took."""

    content: str  # what the model reads (cut to the result limit)
    ok: bool
    duration_s: float
    uncut: str | None = None  # the whole result, when `content` was cut


def parse_arguments(tool_name: str, params: str | dict[str, Any]) -> dict[str, Any]:
    """Model-style arguments (a JSON/JSON5 string or a dict) as a dict, or `ToolError`."""
    if isinstance(params, str):
        try:
            params = json5.loads(params) if params.strip() else {}
        except ValueError as exc:
            raise ToolError(f"{tool_name}: the arguments are not valid JSON ({exc})") from None
    if not isinstance(params, dict):
        raise ToolError(f"{tool_name}: the arguments must be a JSON object")
    return params


def _as_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, list) and all(isinstance(item, ContentItem) for item in result):
        return "\n".join(item.text or item.image or item.file or "" for item in result)
    return json.dumps(result, ensure_ascii=False, indent=2)


def cap_result(content: str, limit: int | None) -> str:
    """`content` cut to `limit` characters, with a marker saying how much was cut."""
    if limit is None or len(content) <= limit:
        return content
    cut = len(content) - limit
    return (
        f"{content[:limit]}\n[... {cut} more characters cut: tool results are limited to "
        f"{limit} characters; the whole result is kept in the run history]"
    )


def invoke_tool(
    tool: BaseTool,
    arguments: str | dict[str, Any],
    *,
    limit: int | None = None,
    debug: bool = False,
) -> ToolOutcome:
    """Call `tool` with model-style arguments (a JSON string or dict); never raises.

    A `ToolError` (or any other exception) becomes an error result the model can read:
    the exception type and message, plus the traceback when `debug`. Results longer than
    `limit` characters are cut, with a marker.
    """
    started = time.monotonic()
    try:
        content, ok = _as_text(tool.call(arguments)), True
    except Exception as exc:  # a tool's bug must not end the run
        content, ok = _error_text(exc, debug), False
    shown = cap_result(content, limit)
    uncut = content if shown != content else None
    return ToolOutcome(shown, ok, time.monotonic() - started, uncut)


def _error_text(exc: Exception, debug: bool) -> str:
    """`Error: message` for a `ToolError`, `Error: Type: message` for others; + traceback."""
    text = f"Error: {exc}" if isinstance(exc, ToolError) else f"Error: {type(exc).__name__}: {exc}"
    return f"{text}\n{traceback.format_exc()}" if debug else text
