"""Turn Qwen-Agent's cumulative `Assistant.run()` snapshots into events.

Every yield of `Assistant.run()` is the whole list of messages so far. Messages before the
last one and every `function` message are final; the last one may still grow, shrink or change
(partial `<tool_call` text, partial arguments with junk tails). We stream only the stable,
visible part of the last message and emit tool calls only once they are final.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.events import Answer, Event, Text, Thinking, ToolCall, ToolResult
from agent.loop.call_text import CALL_OPEN, THINK_CLOSE, THINK_OPEN, loads_lenient
from agent.tools.invoke import ToolOutcome


def _hold_back_partial(text: str, tag: str) -> str:
    """Drop a suffix of `text` that could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return text[:-size]
    return text


def split_content(content: str, final: bool) -> tuple[str, str]:
    """Split raw assistant text into (thinking, visible text), both stripped.

    Unless `final`, text that may be the start of a tag is held back, and so is
    trailing whitespace (it may turn out to precede a tool call).
    """
    body = content.lstrip()
    thinking, after = "", body
    if body.startswith(THINK_OPEN) or THINK_CLOSE in body:
        inner = body[len(THINK_OPEN) :] if body.startswith(THINK_OPEN) else body
        if THINK_CLOSE in inner:
            thinking, after = inner.split(THINK_CLOSE, 1)
        else:
            thinking, after = (inner if final else _hold_back_partial(inner, THINK_CLOSE)), ""
    elif not final and THINK_OPEN.startswith(body):
        after = ""
    visible = after.split(CALL_OPEN, 1)[0] if CALL_OPEN in after else after
    if not final and CALL_OPEN not in after:
        visible = _hold_back_partial(visible, CALL_OPEN)
    return thinking.strip(), visible.strip()


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of content items."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(item.get("text") or "" for item in content if isinstance(item, dict))


def parse_arguments(raw: str) -> Any:
    """Tool-call arguments as JSON when they parse (leniently, as the tool loop reads them),
    else the raw string."""
    try:
        return loads_lenient(raw) if raw.strip() else {}
    except ValueError:
        return raw


@dataclass
class _Growing:
    """Text already emitted for one stream; only extensions of it are emitted."""

    emitted: str = ""

    def advance(self, current: str) -> str:
        if len(current) > len(self.emitted) and current.startswith(self.emitted):
            delta, self.emitted = current[len(self.emitted) :], current
            return delta
        return ""


@dataclass
class _MessageState:
    kind: str
    thinking: _Growing = field(default_factory=_Growing)
    text: _Growing = field(default_factory=_Growing)
    final: bool = False


def _kind(message: dict[str, Any]) -> str:
    if message.get("role") == "function":
        return "result"
    return "call" if message.get("function_call") else "content"


class SnapshotConverter:
    """Feed it snapshots in order; it returns the new events of each one."""

    def __init__(self) -> None:
        self._states: dict[int, _MessageState] = {}
        self._messages: list[dict[str, Any]] = []
        self._pending_calls: deque[ToolCall] = deque()
        self._outcomes: deque[ToolOutcome] = deque()
        self._calls_made = 0
        self._answer_parts: list[str] = []

    def add_outcome(self, outcome: ToolOutcome) -> None:
        """Record how a tool call went; paired with the next tool result message."""
        self._outcomes.append(outcome)

    def feed(self, messages: list[dict[str, Any]]) -> list[Event]:
        """Events made new by this snapshot."""
        self._messages = messages
        events: list[Event] = []
        for index, message in enumerate(messages):
            last = index == len(messages) - 1
            final = not last or message.get("role") == "function"
            events.extend(self._update(index, message, final))
        return events

    def finalize_last(self) -> list[Event]:
        """The last message is complete (a tool is about to run, or the run ended)."""
        if not self._messages:
            return []
        index = len(self._messages) - 1
        return list(self._update(index, self._messages[index], final=True))

    @property
    def shown_text(self) -> str:
        """The answer text of the last message shown so far (what a stopped answer keeps)."""
        state = self._states.get(len(self._messages) - 1)
        return state.text.emitted if state is not None and state.kind == "content" else ""

    def finish(self) -> list[Event]:
        """Close the run: finalize the last message and give the answer, if any."""
        events = self.finalize_last()
        answer = "\n\n".join(part for part in self._answer_parts if part)
        if answer:
            events.append(Answer(text=answer))
        return events

    def _update(self, index: int, message: dict[str, Any], final: bool) -> Iterator[Event]:
        kind = _kind(message)
        state = self._states.get(index)
        if state is None or state.kind != kind:
            state = self._states[index] = _MessageState(kind=kind)
        if state.final:
            return
        state.final = final
        if kind == "content":
            yield from self._content_events(state, message, final)
        elif kind == "call" and final:
            yield self._tool_call(message)
        elif kind == "result":
            yield self._tool_result(message)

    def _content_events(
        self, state: _MessageState, message: dict[str, Any], final: bool
    ) -> Iterator[Event]:
        thinking, visible = split_content(message_text(message), final)
        reasoning = (message.get("reasoning_content") or "").strip()
        thinking = "\n".join(part for part in (reasoning, thinking) if part)
        if delta := state.thinking.advance(thinking):
            yield Thinking(delta=delta)
        if delta := state.text.advance(visible):
            yield Text(delta=delta)
        if final and visible:
            self._answer_parts.append(visible)

    def _tool_call(self, message: dict[str, Any]) -> ToolCall:
        self._calls_made += 1
        self._answer_parts.clear()
        call = message["function_call"]
        event = ToolCall(
            call_id=f"call_{self._calls_made}",
            name=call.get("name", ""),
            arguments=parse_arguments(call.get("arguments") or ""),
        )
        self._pending_calls.append(event)
        return event

    def _tool_result(self, message: dict[str, Any]) -> ToolResult:
        self._answer_parts.clear()
        name = message.get("name") or ""
        call = next((c for c in self._pending_calls if c.name == name), None)
        if call is not None:
            self._pending_calls.remove(call)
        outcome = self._outcomes.popleft() if self._outcomes else None
        content = message_text(message)
        return ToolResult(
            call_id=call.call_id if call else f"call_{self._calls_made}",
            name=name,
            content=outcome.content if outcome else content,
            ok=outcome.ok if outcome else True,
            duration_s=round(outcome.duration_s, 3) if outcome else None,
            uncut=outcome.uncut if outcome else None,
        )
