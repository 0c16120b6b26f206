"""The in-process backend: Qwen-Agent's LLM class over our engine (agent/engine/).

Registered with Qwen-Agent as the LLM type `agent_local`: a thin adapter from Qwen-Agent's
messages and generate_cfg to one engine call (`agent.engine.generate`). We do not use
Qwen-Agent's own `transformers` backend (it breaks on transformers 5, cannot pass
`enable_thinking`, hides generation errors behind a 60 s `queue.Empty` and keeps generating
after the caller stops). Generation runs in the caller's thread, one token per step, so errors
surface at once and generation stops as soon as the consumer stops reading.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any

from qwen_agent.llm.base import register_llm
from qwen_agent.llm.function_calling import BaseFnCallModel
from qwen_agent.llm.schema import ASSISTANT, Message

from agent.backends.tool_choice import AUTO, TOOL_CHOICE_KEY
from agent.config import (
    DEFAULT_DISK_CACHE_MB,
    DEFAULT_KV_CACHE_MB,
    NON_THINKING_PRESET,
    THINKING_PRESET,
    SamplingParams,
)
from agent.engine.constrained import OutputConstraint
from agent.engine.generate import Usage, generate_text, output_constraint, prepare_prompt
from agent.engine.loading import load_local_model

log = logging.getLogger("agent")

FUNCTIONS_KEY = "agent_functions"  # the offered tools, passed from chat() to the generator


def render_prompt(tokenizer: Any, messages: list[Message], thinking: bool) -> str:
    """The prompt for Qwen-Agent's already function-formatted `messages`, from the chat template."""
    plain = [{"role": m.role, "content": m.content or ""} for m in messages]
    return str(
        tokenizer.apply_chat_template(
            plain, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
    )


@register_llm("agent_local")
class LocalQwen(BaseFnCallModel):
    """Qwen-Agent LLM running a local checkpoint; cfg keys: model, device, threads, engine,
    kv_cache_mb, disk_cache_mb, lookup_decoding, thinking, constrain, sampling (a
    `SamplingParams`; default the mode's preset). A call's generate_cfg may override a sampling
    field by name."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__(cfg)
        self.loaded = load_local_model(
            cfg["model"],
            cfg.get("device", "auto"),
            cfg.get("threads"),
            cfg.get("engine", "auto"),
            cfg.get("kv_cache_mb", DEFAULT_KV_CACHE_MB),
            cfg.get("disk_cache_mb", DEFAULT_DISK_CACHE_MB),
        )
        self.thinking = bool(cfg.get("thinking", False))
        preset = THINKING_PRESET if self.thinking else NON_THINKING_PRESET
        self.sampling: SamplingParams = cfg.get("sampling") or preset
        self.constrain = bool(cfg.get("constrain", True))
        self.lookup = bool(cfg.get("lookup_decoding", True))
        self.usage = Usage()

    def render_prompt(self, messages: list[Message]) -> str:
        """The prompt text from the tokenizer's own chat template."""
        return render_prompt(self.loaded.tokenizer, messages, self.thinking)

    def _chat_with_functions(
        self,
        messages: list[Message],
        functions: list[dict],
        stream: bool,
        delta_stream: bool,
        generate_cfg: dict,
        lang: Any,
    ) -> Any:
        # Qwen-Agent does not hand the tools to _chat_stream; the grammar needs them.
        cfg = {**generate_cfg, FUNCTIONS_KEY: functions}
        return super()._chat_with_functions(messages, functions, stream, delta_stream, cfg, lang)

    def _chat_stream(
        self, messages: list[Message], delta_stream: bool, generate_cfg: dict
    ) -> Iterator[list[Message]]:
        text = ""
        for piece in self._generate(messages, generate_cfg):
            text += piece
            yield [Message(ASSISTANT, piece if delta_stream else text)]

    def _chat_no_stream(self, messages: list[Message], generate_cfg: dict) -> list[Message]:
        return [Message(ASSISTANT, "".join(self._generate(messages, generate_cfg)))]

    def _generate(self, messages: list[Message], generate_cfg: dict) -> Iterator[str]:
        prompt = prepare_prompt(
            self.loaded,
            self.render_prompt(messages),
            int(generate_cfg.get("max_new_tokens", 2048)),
        )
        yield from generate_text(
            self.loaded,
            prompt,
            self._sampling(generate_cfg),
            int(generate_cfg.get("seed", 0)),
            self.usage,
            self._constraint(generate_cfg, thinking=prompt.opened_think),
            lookup=self.lookup,
        )

    def _sampling(self, generate_cfg: dict) -> SamplingParams:
        """The sampling settings, with what this call's generate_cfg names in their place."""
        named = {f.name: generate_cfg.get(f.name) for f in fields(SamplingParams)}
        return replace(self.sampling, **{k: v for k, v in named.items() if v is not None})

    def _constraint(self, generate_cfg: dict, thinking: bool) -> OutputConstraint | None:
        """The tool-call grammar for this call, when tools are offered and constraining is on."""
        functions = generate_cfg.get(FUNCTIONS_KEY) or []
        if not (self.constrain and functions):
            return None
        choice = generate_cfg.get(TOOL_CHOICE_KEY, AUTO)
        try:
            return output_constraint(self.loaded, functions, choice, thinking)
        except (OSError, ValueError) as exc:  # e.g. a checkpoint without tokenizer.json
            log.warning("tool calls are not constrained: %s", str(exc).splitlines()[0])
            self.constrain = False
            return None
