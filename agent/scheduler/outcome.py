"""A job run's status, read from its own events: a run counts as a success only when it ended
with an answer that no failing tool call was left standing under."""

from __future__ import annotations

from dataclasses import dataclass

from agent.events import Answer, Error, Event, Notice, RunFinished, ToolResult

REASON_CHARS = 300


@dataclass(frozen=True)
class Outcome:
    """`succeeded`, `failed` (with `reason`), `timed_out` or `interrupted`."""

    status: str
    reason: str | None = None


def outcome_of(events: list[Event]) -> Outcome:
    """The outcome of a finished run's events."""
    finished = next((e for e in reversed(events) if isinstance(e, RunFinished)), None)
    errors = [e for e in events if isinstance(e, Error)]
    if finished is None or finished.status == "cancelled":
        return Outcome("interrupted", "the run was stopped before it ended")
    if finished.status == "timed_out":
        limit = next(
            (e.message for e in events if isinstance(e, Notice) and e.kind == "time_limit"), ""
        )
        return Outcome("timed_out", limit or "stopped at the time limit")
    if errors or finished.status == "error":
        error = errors[-1] if errors else None
        where = "model server down or failing" if error and error.where == "model" else "error"
        return Outcome("failed", _short(f"{where}: {error.message}" if error else where))
    answers = [e for e in events if isinstance(e, Answer)]
    if finished.status != "answered" or not answers or not answers[-1].text.strip():
        return Outcome("failed", "no answer")
    last_result = next((e for e in reversed(events) if isinstance(e, ToolResult)), None)
    if last_result is not None and not last_result.ok:
        return Outcome("failed", _short(f"tool {last_result.name} failed: {last_result.content}"))
    return Outcome("succeeded")


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= REASON_CHARS else flat[: REASON_CHARS - 1] + "…"
