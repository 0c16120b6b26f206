"""A stored run as the runs page shows it: blocks in order (thinking, text, tool calls with
their results, notices, the answer) and a waterfall of its model and tool calls' durations,
from the events and the time each was stored (`History.timed_events`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

FOLD_LINES = 24  # a longer tool result is folded, its first lines shown
FOLD_CHARS = 3000


@dataclass
class Block:
    """One thing the run did: `thinking`, `text`, `tool`, `notice`, `error` or `answer`."""

    kind: str
    text: str = ""
    name: str = ""  # a tool's name, a notice's kind
    arguments: str = ""  # a tool call's, pretty-printed
    result: str | None = None  # a tool's, pretty-printed (None: it never returned)
    ok: bool = True
    duration_s: float | None = None
    call_id: str = ""

    @property
    def folded(self) -> bool:
        """Whether the result is long enough to show folded."""
        result = self.result or ""
        return result.count("\n") >= FOLD_LINES or len(result) > FOLD_CHARS

    @property
    def preview(self) -> str:
        """The first lines of a folded result."""
        return "\n".join((self.result or "")[:FOLD_CHARS].splitlines()[:FOLD_LINES])


@dataclass(frozen=True)
class Bar:
    """A span of the waterfall: a `model` call or a `tool` call, from the run's start."""

    kind: str
    label: str
    start_s: float
    duration_s: float
    ok: bool = True


@dataclass
class Timeline:
    """A run's blocks, its waterfall, and how it ended."""

    blocks: list[Block] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    total_s: float | None = None
    status: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def span_s(self) -> float:
        """The waterfall's length: the run's, else to the end of its last span."""
        ends = [bar.start_s + bar.duration_s for bar in self.bars]
        return max([self.total_s or 0.0, *ends]) or 1.0


def pretty(value: Any) -> str:
    """A tool's arguments or result for people: JSON indented, other text as it is."""
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if not isinstance(parsed, (dict, list)):
            return value
        value = parsed
    return json.dumps(value, ensure_ascii=False, indent=2)


def build_timeline(events: Iterable[tuple[float | None, dict[str, Any]]]) -> Timeline:
    """The timeline of a run's stored events (with when each was stored)."""
    timeline = Timeline()
    builder = _Waterfall()
    calls: dict[str, Block] = {}
    for at, event in events:
        kind = event["type"]
        builder.see(at, event)
        if kind in ("thinking", "text"):
            _add_text(timeline.blocks, kind, event["delta"])
        elif kind == "tool_call":
            block = Block(
                "tool", name=event["name"], arguments=pretty(event["arguments"]),
                call_id=event["call_id"],
            )  # fmt: skip
            calls[event["call_id"]] = block
            timeline.blocks.append(block)
        elif kind == "tool_result":
            block = calls.get(event["call_id"]) or Block("tool", name=event["name"])
            if block.call_id != event["call_id"]:
                timeline.blocks.append(block)
            block.result = pretty(event.get("uncut") or event["content"])
            block.ok, block.duration_s = bool(event["ok"]), event.get("duration_s")
        elif kind == "answer":
            if not _answer_shown(timeline.blocks, event["text"]):
                timeline.blocks.append(Block("answer", text=event["text"]))
        elif kind in ("notice", "error"):
            name = event.get("kind") or event.get("where") or ""
            timeline.blocks.append(Block(kind, text=event["message"], name=name))
        elif kind == "run_finished":
            timeline.status = event["status"]
            timeline.usage, timeline.timings = event["usage"], event["timings"]
    timeline.bars, timeline.total_s = builder.bars, builder.total_s
    return timeline


def _add_text(blocks: list[Block], kind: str, delta: str) -> None:
    """A delta joins the block of its kind it follows, else starts one."""
    if blocks and blocks[-1].kind == kind:
        blocks[-1].text += delta
    else:
        blocks.append(Block(kind, text=delta))


def _answer_shown(blocks: list[Block], answer: str) -> bool:
    """Whether the answer was streamed as the text since the last tool call."""
    for block in reversed(blocks):
        if block.kind == "text":
            return block.text.strip() == answer.strip()
        if block.kind == "tool":
            return False
    return False


class _Waterfall:
    """Model spans (from the start, or a tool's result, to the next tool call or the end) and
    tool spans (from each call to its result)."""

    def __init__(self) -> None:
        self.bars: list[Bar] = []
        self.start: float | None = None
        self.model_from: float | None = None
        self.open_calls: dict[str, tuple[str, float]] = {}
        self.total_s: float | None = None

    def see(self, at: float | None, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "run_started":
            self.start = at if at is not None else event.get("started_at")
            self.model_from = self.start
            return
        if at is None or self.start is None:
            return
        if kind == "tool_call":
            self._close_model(at)
            self.open_calls[event["call_id"]] = (event["name"], at)
        elif kind == "tool_result" and event["call_id"] in self.open_calls:
            name, began = self.open_calls.pop(event["call_id"])
            self._bar("tool", name, began, at, bool(event["ok"]))
            if not self.open_calls:
                self.model_from = at
        elif kind == "run_finished":
            self._close_model(at)
            self.total_s = at - self.start

    def _close_model(self, at: float) -> None:
        if self.model_from is not None:
            self._bar("model", "model", self.model_from, at, True)
            self.model_from = None

    def _bar(self, kind: str, label: str, began: float, ended: float, ok: bool) -> None:
        assert self.start is not None
        self.bars.append(Bar(kind, label, began - self.start, max(ended - began, 0.0), ok))
