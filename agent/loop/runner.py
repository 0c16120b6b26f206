"""Drive `Assistant.run()` and turn what it does into a stream of events.

The Assistant runs in a worker thread; its snapshots and tool-call notices come back through a
queue, so tool calls are shown when they start, and Ctrl-C or a consumer that stops reading
cancels the run within one generated token.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from agent import __version__
from agent.config import Settings
from agent.errors import AgentError, GenerationError, ModelServerError
from agent.events import (
    Answer,
    Error,
    Event,
    Notice,
    RunFinished,
    RunStarted,
    Text,
    Thinking,
)
from agent.history.store import new_id
from agent.loop.assistant import AgentAssistant
from agent.loop.call_text import THINK_CLOSE
from agent.loop.hook_calls import NOTE_KIND, notes
from agent.loop.snapshots import SnapshotConverter
from agent.tools.invoke import ToolOutcome
from agent.tools.toolset import Toolset

WORKER_STOP_S = 10.0
TOOL_SHOWN_WAIT_S = 2.0
STOP_POLL_S = 0.05  # how often a run with a `stop` flag looks at it while it waits


@dataclass(frozen=True)
class RunInfo:
    """What the `run_started` event says about the run."""

    model: str
    backend: str
    thinking: bool
    tools: list[str]
    sandbox: str = ""


def run_info(settings: Settings, toolset: Toolset) -> RunInfo:
    """What the `run_started` event says: model, backend, mode, tools, sandbox."""
    return RunInfo(
        model=settings.model,
        backend=f"server {settings.model_server}" if settings.model_server else "local",
        thinking=settings.thinking,
        tools=[tool.name for tool in toolset.tools],
        sandbox=_sandbox_line(settings, toolset),
    )


def _sandbox_line(settings: Settings, toolset: Toolset) -> str:
    """The run header's sandbox part, when the code interpreter is one of the tools."""
    from agent.sandbox.detect import detect
    from agent.sandbox.limits import Limits

    if "code_interpreter" not in [tool.name for tool in toolset.tools]:
        return ""
    sandbox = detect(settings.sandbox)
    return "sandbox: " + sandbox.summary(settings.code_network, Limits.from_settings(settings))


class _QueueListener:
    def __init__(self, inbox: queue.Queue[tuple[str, Any]]) -> None:
        self._inbox = inbox

    def tool_started(self, name: str, arguments: Any) -> None:
        # Wait until the call has been shown, so a hook that asks the user (chat's approval)
        # asks after the `→ tool` line, not in the middle of it.
        shown = threading.Event()
        self._inbox.put(("tool_start", shown))
        shown.wait(timeout=TOOL_SHOWN_WAIT_S)

    def tool_finished(self, outcome: ToolOutcome) -> None:
        self._inbox.put(("tool_end", outcome))

    def notice(self, kind: str, message: str) -> None:
        self._inbox.put(("notice", Notice(kind=kind, message=message)))


def _work(
    assistant: AgentAssistant,
    messages: list[dict[str, Any]],
    inbox: queue.Queue[tuple[str, Any]],
    cancel: threading.Event,
) -> None:
    snapshots = assistant.run(messages=messages)
    try:
        for snapshot in snapshots:
            inbox.put(("snapshot", snapshot))
            if cancel.is_set():
                break
    except BaseException as exc:  # reported as an event by the consumer
        inbox.put(("error", exc))
    finally:
        snapshots.close()
        inbox.put(("done", None))


def _error_event(exc: BaseException) -> Error:
    where = "model" if isinstance(exc, GenerationError | ModelServerError) else "agent"
    if isinstance(exc, AgentError):
        return Error(message=str(exc), where=where)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return Error(message=f"{type(exc).__name__}: {first_line}".rstrip(": "), where=where)


class _TimeUp(Exception):
    """The run's time limit passed."""


def run_events(
    assistant: AgentAssistant,
    messages: list[dict[str, Any]],
    info: RunInfo,
    transcript: list[dict[str, Any]] | None = None,
    time_limit_s: float | None = None,
    stop: threading.Event | None = None,
    on_stop: Callable[[], None] | None = None,
    notices: list[Notice] | None = None,
) -> Generator[Event, None, None]:
    """Run the assistant on `messages`; yield events ending with `run_finished`.

    With `transcript`, the messages the run added (the answer, tool calls and results, as the
    model should see them next turn: thinking dropped) are appended to it at the end. With
    `time_limit_s`, a run still going after that long is stopped with status `timed_out`.
    `stop` set from another thread cancels the run as Ctrl-C does; `on_stop` is then called
    (to interrupt a running tool). `notices` (what was done to the conversation before it) are
    shown right after `run_started`, so the history keeps them with the run. The hooks
    (`assistant.hooks`) are called as it starts and ends; what they say is a `notice`."""
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
    cancel = threading.Event()
    run_id = new_id("r")
    assistant.tool_listener = _QueueListener(inbox)
    assistant.run_id = run_id
    started = time.monotonic()
    first_output: float | None = None
    status = "no_answer"
    answer = ""
    prompt = str(messages[-1].get("content", "")) if messages else ""
    yield RunStarted(
        prompt=prompt,
        model=info.model,
        backend=info.backend,
        thinking=info.thinking,
        tools=info.tools,
        sandbox=info.sandbox,
        version=__version__,
        run_id=run_id,
    )
    yield from _hook_notices(
        assistant,
        "run_started",
        run_id=run_id,
        prompt=prompt,
        model=info.model,
        backend=info.backend,
        tools=info.tools,
    )
    yield from notices or []
    worker = threading.Thread(target=_work, args=(assistant, messages, inbox, cancel), daemon=True)
    worker.start()
    converter = SnapshotConverter()
    last: list[dict[str, Any]] = []
    deadline = None if time_limit_s is None else started + time_limit_s
    try:
        while True:
            kind, payload = _next_item(inbox, deadline, stop)
            if kind == "done":
                break
            if kind == "snapshot":
                last = payload
            if kind == "error":
                status = "error"
                yield _error_event(payload)
                continue
            if kind == "tool_end":
                converter.add_outcome(payload)
                continue
            if kind == "notice":
                yield from converter.finalize_last()
                yield payload
                continue
            events = converter.feed(payload) if kind == "snapshot" else converter.finalize_last()
            for event in events:
                if first_output is None and isinstance(event, Text | Thinking):
                    first_output = time.monotonic() - started
                yield event
            if kind == "tool_start":
                payload.set()
        for event in converter.finish():
            if isinstance(event, Answer):
                answer = event.text
                status = "answered" if status != "error" else status
            yield event
    except KeyboardInterrupt:
        status = "cancelled"
        if on_stop is not None:
            on_stop()
        if converter.shown_text:  # the partial answer is kept, and marked
            yield Notice(kind="cancelled", message="answer stopped by the user")
    except _TimeUp:
        status = "timed_out"
        yield Notice(kind="time_limit", message=f"stopped at the time limit of {time_limit_s:g} s")
    finally:
        cancel.set()
        # The worker stops at its next token; let it, so no model call runs into shutdown.
        worker.join(timeout=WORKER_STOP_S)
    timings = {"total_s": round(time.monotonic() - started, 3)}
    if first_output is not None:
        timings["first_output_s"] = round(first_output, 3)
    usage = assistant.llm.usage.as_dict() if hasattr(assistant.llm, "usage") else {}
    if transcript is not None:
        transcript.extend(_kept_messages(last, status, converter.shown_text))
    yield from _hook_notices(
        assistant,
        "run_finished",
        run_id=run_id,
        prompt=prompt,
        status=status,
        answer=answer,
        usage=usage,
        timings=timings,
    )
    yield RunFinished(status=status, usage=usage, timings=timings)


def _hook_notices(assistant: AgentAssistant, point: str, **arguments: Any) -> Iterator[Notice]:
    """Call the `point` hooks; a notice for each line they return."""
    for note in notes(assistant.hooks, point, **arguments):
        yield Notice(kind=NOTE_KIND, message=note)


def _next_item(
    inbox: queue.Queue[tuple[str, Any]], deadline: float | None, stop: threading.Event | None
) -> tuple[str, Any]:
    """The worker's next report; `_TimeUp` at the deadline, KeyboardInterrupt once `stop` is
    set."""
    while True:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if stop is not None:
            wait = STOP_POLL_S if wait is None else min(wait, STOP_POLL_S)
        try:
            return inbox.get(timeout=wait)
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                raise _TimeUp from None


def _kept_messages(
    last: list[dict[str, Any]], status: str, shown_text: str
) -> list[dict[str, Any]]:
    """What a run adds to the conversation; a stopped answer as far as it was shown, marked."""
    kept = [without_thinking(message) for message in last]
    if status in ("cancelled", "timed_out"):
        if kept and kept[-1].get("role") == "assistant" and not kept[-1].get("function_call"):
            kept.pop()  # the partial message as it was streaming
        if shown_text:
            kept.append({"role": "assistant", "content": shown_text + " [stopped by the user]"})
    return kept


def without_thinking(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the next turn should see it: no reasoning, no `<think>` block."""
    kept = {key: value for key, value in message.items() if key != "reasoning_content"}
    content = kept.get("content")
    if isinstance(content, str) and THINK_CLOSE in content:
        kept["content"] = content.rsplit(THINK_CLOSE, 1)[1].lstrip("\n")
    return kept


def show_run(events: Generator[Event, None, None], show: Callable[[Event], None]) -> str:
    """Show every event of a run; Ctrl-C while showing cancels the run. Returns its status."""
    status = "error"
    interrupted = False
    while True:
        try:
            event = events.throw(KeyboardInterrupt()) if interrupted else next(events)
        except StopIteration:
            return status
        interrupted = False
        try:
            show(event)
        except KeyboardInterrupt:
            interrupted = True
        if isinstance(event, RunFinished):
            status = event.status
