"""The text-completions request (`/v1/completions`), checked: raw prompts, no chat template,
the model's text as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.config import NON_THINKING_PRESET
from agent.server.errors import ApiError
from agent.server.fields import (
    SAMPLING,
    Body,
    check_model,
    choices,
    include_usage,
    sampling,
    seeds,
    stop,
)
from agent.server.generation import Generation
from agent.server.protocol import Limits

TEXT_FIELDS = SAMPLING | {"prompt", "echo", "logprobs"}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
MAX_PROMPTS = 16
MAX_LOGPROBS = 20


@dataclass(frozen=True)
class TextRequest:
    """A checked request: `n` generations per prompt, in order, and how to answer."""

    choices: list[Generation]
    n: int
    stream: bool
    include_usage: bool


def _prompts(body: Body) -> list[str]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    ok = isinstance(prompts, list) and 0 < len(prompts) <= MAX_PROMPTS
    if not ok or not all(isinstance(p, str) and p for p in prompts):
        message = f"prompt must be a non-empty string or a list of up to {MAX_PROMPTS} of them"
        raise ApiError(400, message, "prompt")
    return prompts


def parse_text_request(raw: Any, served: str, limits: Limits) -> TextRequest:
    """The generations a text-completions request asks for, and how to answer it."""
    body = Body(raw, TEXT_FIELDS)
    check_model(body, served)
    if body.flag("echo", False):
        raise ApiError(400, "echo: true is not supported", "echo")
    n = choices(body)
    params = sampling(body, NON_THINKING_PRESET)
    max_tokens = body.integer("max_tokens", 1, limits.max_tokens) or DEFAULT_MAX_TOKENS
    logprobs = body.integer("logprobs", 0, MAX_LOGPROBS)
    stops = stop(body)
    generations = [
        Generation(messages=[], tools=None, tool_choice="none", thinking=False, sampling=params,
                   max_tokens=max_tokens, seed=seed, stop=stops, logprobs=logprobs, text=prompt)
        for prompt in _prompts(body)
        for seed in seeds(body, n)
    ]  # fmt: skip
    return TextRequest(generations, n, body.flag("stream", False), include_usage(body))
