"""Where a fork or a resume of a recorded run starts: the messages the model has, the prompt,
and what the new run is recorded as.

A fork starts a new conversation from a run's messages: up to the model's output that made
tool call `step` (`--at`), or all of them; with a prompt, that prompt is a new user turn,
without one the model goes on with the run's own turn. A resume goes on with an interrupted or
cancelled run in its own conversation: the tool calls that had not returned are run again
(or not: the caller asks) and the model continues.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.errors import ConfigError
from agent.history.store import History, RunOrigin, RunRecord
from agent.history.transcript import before_step, split_pending, without_partial_answer

RESUMABLE = ("interrupted", "cancelled")


@dataclass
class Start:
    """How a new run starts: the conversation's `messages` so far, then either a new user turn
    (`continues` False: `prompt` is the message) or the model going on with the turn they end
    in (`continues`: recorded under `prompt`, the calls in `pending` run first)."""

    source: RunRecord
    origin: RunOrigin
    messages: list[dict[str, Any]]
    prompt: str
    continues: bool
    conversation: str | None = None  # the conversation it joins (a resume's); None: a new one
    pending: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)  # a resume: the source's messages


def _turn_so_far(history: History, run: RunRecord) -> list[dict[str, Any]]:
    """The conversation's messages up to `run`'s turn, with that turn's prompt."""
    before = history.messages(run.conversation_id, before_turn=run.turn)
    return before if run.continues else [*before, {"role": "user", "content": run.prompt}]


def fork_start(history: History, run_id: str, step: int | None, prompt: str | None) -> Start:
    """Where `agent runs fork RUN [--at STEP] [PROMPT]` starts."""
    source = history.run(run_id)
    messages = history.run_messages(source.id)
    head = before_step(messages, step) if step is not None else split_pending(messages)[0]
    origin = RunOrigin("fork", source.id, step)
    so_far = _turn_so_far(history, source)
    if prompt:
        return Start(source, origin, [*so_far, *head], prompt, continues=False)
    if step is None and source.status == "answered":
        raise ConfigError(
            f"run {source.id} ended with its answer: give a prompt to go on from it "
            f'(agent runs fork {source.id} "..."), or --at STEP to fork before one of its '
            "tool calls (agent runs steps lists them)"
        )
    return Start(
        source, origin, [*so_far, *without_partial_answer(head)], source.prompt, continues=True
    )


def resume_start(history: History, run_id: str) -> Start:
    """Where `agent runs resume RUN` starts; `pending` holds the calls that had not returned."""
    source = history.run(run_id)
    if source.status not in RESUMABLE:
        raise ConfigError(
            f"run {source.id} is {source.status}, not interrupted or cancelled: only a run that "
            f"stopped can be resumed; fork it to go on from it (agent runs fork {source.id})"
        )
    last = history.conversation_runs(source.conversation_id)[-1]
    if last.id != source.id:
        raise ConfigError(
            f"run {source.id} is not the last of its conversation ({last.id} came after); "
            f"fork it instead: agent runs fork {source.id}"
        )
    done, pending = split_pending(history.run_messages(source.id))
    kept = without_partial_answer(done)
    return Start(
        source,
        RunOrigin("resume", source.id),
        [*_turn_so_far(history, source), *kept],
        source.prompt,
        continues=True,
        conversation=source.conversation_id,
        pending=pending,
        kept=kept,
    )
