"""Calling one tool exactly as the model would, and recording how it went."""

import json
import time
from dataclasses import dataclass
from typing import Any

from qwen_agent.llm.schema import ContentItem
from qwen_agent.tools.base import BaseTool

from agent.errors import ToolError


@dataclass(frozen=True)
class ToolOutcome:
    """The text result of one tool call, whether it failed, and how long it took."""

    content: str
    ok: bool
    duration_s: float


def _as_text(result: Any) -> str:
    if isinstance(result, str):
        return result
    if isinstance(result, list) and all(isinstance(item, ContentItem) for item in result):
        return "\n".join(item.text or item.image or item.file or "" for item in result)
    return json.dumps(result, ensure_ascii=False, indent=2)


def invoke_tool(tool: BaseTool, arguments: str | dict[str, Any]) -> ToolOutcome:
    """Call `tool` with model-style arguments (a JSON string or dict); never raises.

    A `ToolError` (or any other exception) becomes an error result the model can read:
    the exception type and message, no traceback.
    """
    started = time.monotonic()
    try:
        content = _as_text(tool.call(arguments))
        ok = True
    except ToolError as exc:
        content, ok = f"Error: {exc}", False
    except Exception as exc:  # a tool's bug must not end the run
        content, ok = f"Error: {type(exc).__name__}: {exc}", False
    return ToolOutcome(content=content, ok=ok, duration_s=time.monotonic() - started)
