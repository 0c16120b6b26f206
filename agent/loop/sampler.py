"""The model in use as the answer to an MCP server's sampling request.

`completion_sampler` wraps the session's Qwen-Agent LLM (the local engine or the model server)
into the plain `Sampler` the MCP layer calls: messages, a token cap and a system prompt in,
the model's visible text out (no thinking). It is called in a worker thread while the tool
call that led to the request waits, so the model is otherwise idle.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from qwen_agent.llm.base import BaseChatModel
from qwen_agent.llm.schema import SYSTEM, Message

from agent.config import Settings
from agent.loop.runner import without_thinking
from agent.loop.snapshots import message_text
from agent.tools.mcp_requests import Sampler


def completion_sampler(llm: BaseChatModel, settings: Settings) -> Sampler:
    """A `Sampler` on `llm`: one completion of at most the given number of tokens."""
    # The local engine reads `max_new_tokens`; an OpenAI-compatible server `max_tokens`.
    length_key = "max_tokens" if settings.model_server else "max_new_tokens"

    def sample(messages: list[dict[str, str]], max_tokens: int, system_prompt: str | None) -> str:
        chat = [Message(SYSTEM, system_prompt)] if system_prompt else []
        chat += [Message(message["role"], message["content"]) for message in messages]
        snapshots = llm.chat(
            messages=chat,
            stream=True,
            delta_stream=False,
            extra_generate_cfg={length_key: max_tokens},
        )
        last: Any = deque(snapshots, maxlen=1)  # each snapshot is the whole reply so far
        if not last or not last[0]:
            return ""
        final = last[0][-1]
        reply = final.model_dump() if isinstance(final, Message) else dict(final)
        return str(without_thinking({"content": message_text(reply)})["content"]).strip()

    return sample
