"""Any OpenAI-compatible server (vLLM, SGLang) through Qwen-Agent's OpenAI client.

Registered with Qwen-Agent as the LLM type `agent_remote`. The thinking switch goes to the
server's chat template as `chat_template_kwargs`; the server's reasoning text (`reasoning_content`,
or `reasoning` in newer vLLM) is shown as thinking.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from qwen_agent.llm.base import ModelServiceError, register_llm
from qwen_agent.llm.oai import TextChatAtOAI
from qwen_agent.llm.schema import Message

from agent.backends.tool_choice import TOOL_CHOICE_KEY
from agent.config import SamplingParams
from agent.errors import ModelServerError


def _with_reasoning_content(chunks: Iterator[Any]) -> Iterator[Any]:
    """Copy newer vLLM's `reasoning` field to `reasoning_content`, which Qwen-Agent reads."""
    for chunk in chunks:
        for choice in getattr(chunk, "choices", None) or []:
            delta: Any = getattr(choice, "delta", None)
            reasoning = getattr(delta, "reasoning", None)
            if reasoning and not getattr(delta, "reasoning_content", None):
                delta.reasoning_content = reasoning
        yield chunk


@register_llm("agent_remote")
class RemoteQwen(TextChatAtOAI):
    """Qwen-Agent's OpenAI-compatible client with errors a user can act on."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.server = cfg["model_server"]
        create: Any = self.__dict__["_chat_complete_create"]  # set by TextChatAtOAI.__init__

        def create_with_reasoning(*args: Any, **kwargs: Any) -> Any:
            response = create(*args, **kwargs)
            return _with_reasoning_content(response) if kwargs.get("stream") else response

        self._chat_complete_create = create_with_reasoning

    def _chat_stream(
        self, messages: list[Message], delta_stream: bool, generate_cfg: dict
    ) -> Iterator[list[Message]]:
        generate_cfg = _without_tool_choice(generate_cfg)
        try:
            yield from super()._chat_stream(messages, delta_stream, generate_cfg)
        except ModelServiceError as exc:
            raise self._error(exc) from None

    def _chat_no_stream(self, messages: list[Message], generate_cfg: dict) -> list[Message]:
        generate_cfg = _without_tool_choice(generate_cfg)
        try:
            return super()._chat_no_stream(messages, generate_cfg)
        except ModelServiceError as exc:
            raise self._error(exc) from None

    def _error(self, exc: ModelServiceError) -> ModelServerError:
        cause = exc.exception or exc
        reason = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        return ModelServerError(f"model server {self.server} failed: {reason}")


def _without_tool_choice(generate_cfg: dict) -> dict:
    """The server gets no grammar (and would reject the unknown key): the tool loop's checks
    stand in for it."""
    return {key: value for key, value in generate_cfg.items() if key != TOOL_CHOICE_KEY}


def remote_generate_cfg(
    *, thinking: bool, sampling: SamplingParams, max_new_tokens: int, seed: int | None
) -> dict[str, Any]:
    """Generation settings in the OpenAI API's terms (vLLM/SGLang extras in `extra_body`)."""
    cfg: dict[str, Any] = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "presence_penalty": sampling.presence_penalty,
        "max_tokens": max_new_tokens,
        "extra_body": {
            "min_p": sampling.min_p,
            "chat_template_kwargs": {"enable_thinking": thinking},
        },
    }
    if seed is not None:
        cfg["seed"] = seed
    return cfg
