"""The typed events a run produces; every output is made from them."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

_C1_CONTROLS = re.compile("[\x7f-\x9f]")  # JSON escapes only C0; these are raw in its output


@dataclass(frozen=True)
class Event:
    """Base class; `type` names the event in JSON."""

    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON-ready dict with its `type` first."""
        return {"type": self.type, **asdict(self)}

    def to_json(self) -> str:
        """One line of JSON; C1 control characters escaped too, so a terminal shows it safely."""
        return _C1_CONTROLS.sub(
            lambda m: f"\\u{ord(m.group()):04x}", json.dumps(self.to_dict(), ensure_ascii=False)
        )


@dataclass(frozen=True)
class RunStarted(Event):
    type: ClassVar[str] = "run_started"
    prompt: str
    model: str
    backend: str
    thinking: bool
    tools: list[str]
    sandbox: str = ""  # the code interpreter's isolation, e.g. "sandbox: bubblewrap, network off"
    started_at: float = field(default_factory=time.time)
    version: str = ""  # of the agent that ran it ("" in records from before it was kept)
    run_id: str = ""  # the run's id, as the run history and the hooks know it ("" in old records)


@dataclass(frozen=True)
class Thinking(Event):
    type: ClassVar[str] = "thinking"
    delta: str


@dataclass(frozen=True)
class Text(Event):
    type: ClassVar[str] = "text"
    delta: str


@dataclass(frozen=True)
class ToolCall(Event):
    type: ClassVar[str] = "tool_call"
    call_id: str
    name: str
    arguments: Any


@dataclass(frozen=True)
class ToolResult(Event):
    type: ClassVar[str] = "tool_result"
    call_id: str
    name: str
    content: str  # what the model read
    ok: bool
    duration_s: float | None
    uncut: str | None = None  # the whole result, where the model read it cut


@dataclass(frozen=True)
class Answer(Event):
    type: ClassVar[str] = "answer"
    text: str


@dataclass(frozen=True)
class RunFinished(Event):
    type: ClassVar[str] = "run_finished"
    status: str  # "answered", "no_answer", "error", "cancelled", "timed_out" or "interrupted"
    usage: dict[str, int]
    timings: dict[str, float]
    # How full the context window is for the next turn: tokens, window, percent.
    context: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Notice(Event):
    """The tool loop stepped in: `step_limit` (tools turned off for a final answer),
    `no_answer` (the model gave none even then), `cancelled` (the user stopped the answer),
    `context` (old turns left out), `compacted` (older turns replaced by a summary the model
    wrote, or older tool results cut), `waiting` (another run has the model), `time_limit` (a
    job's run stopped at its time limit) or `hook` (a hook failed, or had a line to show:
    agent/loop/hook_calls.py); or an MCP server's doing: `sampling` (it asked the model for a
    completion, or was refused), `elicitation` (its form was refused), `attachment` (a
    resource was cut)."""

    type: ClassVar[str] = "notice"
    kind: str
    message: str


@dataclass(frozen=True)
class Error(Event):
    type: ClassVar[str] = "error"
    message: str
    where: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        RunStarted,
        Thinking,
        Text,
        ToolCall,
        ToolResult,
        Answer,
        RunFinished,
        Notice,
        Error,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """An event back from its `to_dict()` form (as the run history stores it)."""
    fields_ = {key: value for key, value in data.items() if key != "type"}
    return EVENT_TYPES[data["type"]](**fields_)
