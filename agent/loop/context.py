"""Keeping a conversation inside the model's context window (32,768 tokens for Qwen3-0.6B).

Tokens are counted with Qwen's own BPE (the `qwen.tiktoken` Qwen-Agent ships), the same ids
the model reads; the chat template adds a few tokens per message, allowed for.
"""

from __future__ import annotations

import json
from typing import Any

from agent.config import CONTEXT_TOKENS, Settings
from agent.errors import ConfigError

PER_MESSAGE_TOKENS = 8  # <|im_start|>role\n ... <|im_end|>\n, and the function-call wrapping


def count_tokens(text: str) -> int:
    """How many Qwen tokens `text` is."""
    from qwen_agent.utils.tokenization_qwen import count_tokens as qwen_count

    return int(qwen_count(text))


def message_tokens(message: dict[str, Any]) -> int:
    """A message's tokens as the prompt will hold them."""
    text = message.get("content") or ""
    if not isinstance(text, str):
        text = json.dumps(text, ensure_ascii=False)
    call = message.get("function_call")
    if call:
        text += json.dumps(call, ensure_ascii=False)
    return count_tokens(text) + PER_MESSAGE_TOKENS


def check_prompt_fits(tokens: int, reserve: int) -> None:
    """A one-line error when a prompt of `tokens` leaves less than `reserve` of the window."""
    if tokens + reserve > CONTEXT_TOKENS:
        raise ConfigError(
            f"the prompt is {tokens:,} tokens; with the tools and room for the answer "
            f"({reserve:,}) that is over the model's {CONTEXT_TOKENS:,}-token context; "
            "shorten it or send a part of it"
        )


def check_task_fits(text: str, settings: Settings) -> None:
    """Refuse a task too long for the window before anything loads (a one-line error). Its
    tokens are counted only when its bytes could not fit: a token is at least one byte, so a
    usual task needs no tokenizer (the resident service's light client imports none)."""
    room = CONTEXT_TOKENS - min(settings.max_new_tokens, CONTEXT_TOKENS // 4)
    if len(text.encode()) <= room:
        return
    check_prompt_fits(
        count_tokens(text), reserve(settings.system_prompt, [], settings.max_new_tokens)
    )


def turns_of(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The messages grouped in turns: a user message and what followed it."""
    turns: list[list[dict[str, Any]]] = []
    for message in messages:
        if message.get("role") == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def trim_turns(messages: list[dict[str, Any]], reserve: int) -> tuple[list[dict[str, Any]], int]:
    """`messages` (earlier turns, then the current user turn last) with the oldest turns
    dropped until they fit in the window beside `reserve` tokens; and how many were dropped.

    A turn is a user message and what followed it. The current turn is always kept."""
    turns = turns_of(messages)
    sizes = [sum(message_tokens(m) for m in turn) for turn in turns]
    dropped = 0
    while dropped < len(turns) - 1 and sum(sizes[dropped:]) + reserve > CONTEXT_TOKENS:
        dropped += 1
    return [m for turn in turns[dropped:] for m in turn], dropped


FUNCTION_PROMPT_TOKENS = 400  # Qwen-Agent's text around the tool schemas in the system prompt


def reserve(system_prompt: str, functions: list[dict[str, Any]], max_new_tokens: int) -> int:
    """The tokens a turn needs besides the conversation: the system prompt with the tool
    schemas, and the room for the answer."""
    schemas = json.dumps(functions, ensure_ascii=False) if functions else ""
    fixed = count_tokens(system_prompt) + (count_tokens(schemas) + FUNCTION_PROMPT_TOKENS)
    return fixed + min(max_new_tokens, CONTEXT_TOKENS // 4)


def reserve_for(settings: Settings, toolset: Any) -> int:
    """The context a turn needs besides the conversation (system prompt, schemas, answer)."""
    functions = [tool.function for tool in toolset.tools]
    return reserve(settings.system_prompt, functions, settings.max_new_tokens)
