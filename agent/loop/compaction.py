"""Keeping a conversation under the context window without losing what the user said silently.

Two measures, both said in a notice:
- Between turns (`compact_turns`): when the conversation passes the `compact_at` share of the
  window, its older turns are replaced by a summary the model writes (the current turn and the
  latest turns are kept as they are). The summary goes in front of the first kept user message,
  marked as what it is.
- Inside one run's tool loop (`cut_old_results`): when the tool results pile up past the
  budget, the older results are cut to a short head with a note; the whole text stays in the
  run history (the `tool_result` events keep it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import CONTEXT_TOKENS
from agent.loop.context import message_tokens, turns_of

SUMMARY_PROMPT = (
    "You summarize conversations. Write a concise summary of the conversation below: what the "
    "user asked and wanted, the facts and results found (keep names, numbers, dates, paths and "
    "values exactly), what was decided, and what is still open. Write it in plain prose, "
    "without a preamble."
)
SUMMARY_MARK = "[Summary of the earlier conversation, written by the model:]"
CUT_RESULT_CHARS = 600  # what is left of an older tool result cut inside a run
TRANSCRIPT_MESSAGE_CHARS = 4_000  # of each message, in what the model summarizes
KEPT_SHARE = 0.5  # the latest turns kept whole fill at most this share of the threshold


@dataclass(frozen=True)
class Compaction:
    """What `compact_turns` did: the messages to send, and what to tell the user."""

    messages: list[dict[str, Any]]
    compacted_turns: int = 0
    compacted_tokens: int = 0
    summary: str = ""


def conversation_tokens(messages: list[dict[str, Any]]) -> int:
    """The tokens the messages take in the prompt."""
    return sum(message_tokens(message) for message in messages)


def compact_turns(
    messages: list[dict[str, Any]],
    reserve: int,
    compact_at: float,
    summarize: Callable[[str], str],
) -> Compaction:
    """`messages` (the current user turn last) as they should be sent: unchanged while they
    fit under `compact_at` of the window beside `reserve`; else the older turns summarized."""
    threshold = int(compact_at * CONTEXT_TOKENS) - reserve
    if conversation_tokens(messages) <= threshold:
        return Compaction(messages)
    turns = turns_of(messages)
    kept = 1  # the current turn, always
    budget = int(threshold * KEPT_SHARE)
    while kept < len(turns) and conversation_tokens(_flat(turns[-(kept + 1) :])) <= budget:
        kept += 1
    older, recent = turns[:-kept], turns[-kept:]
    if not older:
        return Compaction(messages)
    summary = summarize(transcript(_flat(older))).strip()
    first = dict(recent[0][0])
    first["content"] = f"{SUMMARY_MARK}\n{summary}\n\n[The conversation goes on:]\n" + str(
        first.get("content") or ""
    )
    compacted = [first, *recent[0][1:], *_flat(recent[1:])]
    return Compaction(compacted, len(older), conversation_tokens(_flat(older)), summary)


def transcript(messages: list[dict[str, Any]]) -> str:
    """The messages as plain text for the model to summarize (each one capped)."""
    lines = []
    for message in messages:
        role = message.get("role")
        content = str(message.get("content") or "")
        if len(content) > TRANSCRIPT_MESSAGE_CHARS:
            content = content[:TRANSCRIPT_MESSAGE_CHARS] + " [...]"
        if message.get("function_call"):
            call = message["function_call"]
            lines.append(f"Assistant called {call.get('name')} with {call.get('arguments')}")
        elif role == "function":
            lines.append(f"Result of {message.get('name')}: {content}")
        elif content:
            lines.append(f"{'User' if role == 'user' else 'Assistant'}: {content}")
    return "\n\n".join(lines)


def cut_old_results(messages: list[Any], budget: int) -> int:
    """Cut the oldest tool results (Qwen-Agent `Message`s with role `function`; never the last
    one) until the messages fit in `budget` tokens; how many were cut."""
    cut = 0
    results = [m for m in messages if m.role == "function" and isinstance(m.content, str)]
    for message in results[:-1]:
        if _tokens(messages) <= budget:
            break
        if len(message.content) <= CUT_RESULT_CHARS:
            continue
        message.content = (
            f"{message.content[:CUT_RESULT_CHARS]}\n[... {len(message.content) - CUT_RESULT_CHARS}"
            " more characters cut to keep the conversation within the context window; the whole "
            "result is kept in the run history]"
        )
        cut += 1
    return cut


def _tokens(messages: list[Any]) -> int:
    return sum(message_tokens(m.model_dump()) for m in messages)


def _flat(turns: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [message for turn in turns for message in turn]
