"""A recorded run as the model's messages, and its steps, for forks, resumes and replays.

A run's messages are stored when its turn ends (`History.set_messages`); a run that was killed
has none, so they are rebuilt from its events: the text the model showed, each tool call and
each result (thinking is in neither). Messages are Qwen-Agent's, as dicts: `assistant` with
`content` or a `function_call`, and `function` results, in call order.

Step N is the run's N-th tool call, counted from 1 in the order the calls were made. A fork
"at step N" keeps everything before the model's output that made call N: the model decides
again from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from agent.errors import ConfigError

NOT_RUN_KEY = "not_run"  # in a pending call's `extra`: why it is not run (its error result)


@dataclass(frozen=True)
class Step:
    """One tool call of a recorded run and how it ended (`result` None: it had not returned
    when the run stopped)."""

    number: int
    name: str
    arguments: Any
    result: str | None
    ok: bool | None


def steps(events: Iterable[dict[str, Any]]) -> list[Step]:
    """The tool calls of a run's stored events, numbered from 1, each with its result."""
    calls: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for event in events:
        if event["type"] == "tool_call":
            calls.append(event)
        elif event["type"] == "tool_result":
            results.setdefault(event["call_id"], event)
    found = []
    for number, call in enumerate(calls, 1):
        result = results.get(call["call_id"])
        found.append(
            Step(
                number=number,
                name=call["name"],
                arguments=call["arguments"],
                result=result["content"] if result else None,
                ok=bool(result["ok"]) if result else None,
            )
        )
    return found


def call_message(name: str, arguments: Any) -> dict[str, Any]:
    """The assistant message of a tool call, its arguments as the JSON text the model wrote."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"role": "assistant", "content": "", "function_call": {"name": name, "arguments": text}}


def messages_from_events(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages a run added, rebuilt from its stored events."""
    messages: list[dict[str, Any]] = []
    text: list[str] = []

    def flush() -> None:
        if "".join(text).strip():
            messages.append({"role": "assistant", "content": "".join(text)})
        text.clear()

    for event in events:
        if event["type"] == "text":
            text.append(event["delta"])
        elif event["type"] == "tool_call":
            flush()
            messages.append(call_message(event["name"], event["arguments"]))
        elif event["type"] == "tool_result":
            flush()
            result = {"role": "function", "name": event["name"], "content": event["content"]}
            messages.append(result)
    flush()
    return messages


def is_call(message: dict[str, Any]) -> bool:
    """Whether `message` is the model's tool call."""
    return bool(message.get("function_call"))


def trailing_calls(messages: list[Any]) -> int:
    """How many messages at the end of `messages` are tool calls with no result yet: a turn
    given such messages (a resumed run's) runs those calls before the model goes on. (Works
    on Qwen-Agent `Message`s too.)"""
    count = 0
    while count < len(messages) and messages[-1 - count].get("function_call"):
        count += 1
    return count


def split_pending(
    messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`messages` as (done, pending): the tool calls with no result yet (the last ones: results
    come in call order) taken out, the rest kept in order."""
    calls = [index for index, message in enumerate(messages) if is_call(message)]
    returned = sum(1 for message in messages if message.get("role") == "function")
    open_calls = set(calls[returned:])
    done = [message for index, message in enumerate(messages) if index not in open_calls]
    return done, [messages[index] for index in sorted(open_calls)]


def without_partial_answer(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` without the model's text at the end (a stopped run's answer so far, which the
    model writes again when the run goes on)."""
    kept = list(messages)
    while kept and kept[-1].get("role") == "assistant" and not is_call(kept[-1]):
        kept.pop()
    return kept


def before_step(messages: list[dict[str, Any]], step: int) -> list[dict[str, Any]]:
    """The messages before the model's output that made tool call `step` (from 1); calls of
    that output made before it keep their results."""
    calls = [index for index, message in enumerate(messages) if is_call(message)]
    if not 1 <= step <= len(calls):
        raise ConfigError(
            f"--at {step}: the run has {len(calls)} tool call{'s' if len(calls) != 1 else ''} "
            f"(steps 1 to {len(calls)}; agent runs steps ID lists them)"
            if calls
            else f"--at {step}: the run made no tool call; fork it from its end (no --at)"
        )
    cut = calls[step - 1]
    head = without_partial_answer(messages[:cut])
    open_calls = sum(1 for m in head if is_call(m)) - sum(
        1 for m in head if m.get("role") == "function"
    )
    later = [m for m in messages[cut:] if m.get("role") == "function"]
    return head + later[: max(open_calls, 0)]
