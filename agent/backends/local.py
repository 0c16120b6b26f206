"""The in-process backend: a Qwen3 checkpoint (GPTQ or not) run with transformers.

Registered with Qwen-Agent as the LLM type `agent_local`. We do not use Qwen-Agent's own
`transformers` backend (it breaks on transformers 5, cannot pass `enable_thinking`, hides
generation errors behind a 60 s `queue.Empty` and keeps generating after the caller stops).
Generation runs in the caller's thread, one token per step, so errors surface at once and
generation stops as soon as the consumer stops reading.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from qwen_agent.llm.base import register_llm
from qwen_agent.llm.function_calling import BaseFnCallModel
from qwen_agent.llm.schema import ASSISTANT, Message

from agent.backends.constrained import OutputConstraint, ToolCallConstraint, grammar_tools
from agent.backends.local_model import LoadedModel, load_local_model
from agent.backends.sampling import SamplingParams, sample_next_token
from agent.backends.tool_choice import AUTO, TOOL_CHOICE_KEY
from agent.config import CONTEXT_TOKENS, DEFAULT_DISK_CACHE_MB, DEFAULT_KV_CACHE_MB
from agent.errors import GenerationError

log = logging.getLogger("agent")

THINK_PROMPT_SUFFIX = "<think>\n"
FUNCTIONS_KEY = "agent_functions"  # the offered tools, passed from chat() to the generator
FINISH_MARGIN = 64  # tokens before the limit at which an open tool call is steered to its end


@dataclass
class Usage:
    """Token counts and timings summed over the model calls of a run."""

    calls: int = 0
    prompt_tokens: int = 0
    reused_prompt_tokens: int = 0  # prompt tokens whose keys and values came from an earlier call
    completion_tokens: int = 0
    constrained_tokens: int = 0  # generated under the tool-call grammar (forced ones included)
    forced_tokens: int = 0  # the grammar's only possible continuation, fed without sampling
    constrain_s: float = 0.0  # time spent computing and applying grammar masks
    prefill_s: float = 0.0
    decode_s: float = 0.0
    first_token_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        """The counts, for the `run_finished` event."""
        return {
            "llm_calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "reused_prompt_tokens": self.reused_prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "constrained_tokens": self.constrained_tokens,
        }


TAGS = ("<tool_call>", "</tool_call>", "<think>", "</think>")


class IncrementalDecoder:
    """Turns token ids into text pieces, holding back incomplete UTF-8 sequences.

    Each token costs the same: only a short window of the latest tokens is decoded (the text
    before them is final), not the whole answer again. Special tokens are dropped, except the
    tool-call and think tags: the official Qwen3 tokenizer does not mark them special, but
    some re-exports do, and the tool loop needs them.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._tags = {tokenizer.convert_tokens_to_ids(tag): tag for tag in TAGS}
        self._ids: list[int] = []  # the tokens since the last tag
        self._prefix = 0  # self._ids[_prefix:_read] were decoded into text already shown
        self._read = 0

    def push(self, token_id: int) -> str:
        """The text `token_id` adds ("" while a character is incomplete)."""
        if token_id in self._tags:
            rest = self._decoded(self._ids[self._prefix :])[len(self._shown_window()) :]
            self._ids, self._prefix, self._read = [], 0, 0
            return rest + self._tags[token_id]
        self._ids.append(token_id)
        shown = self._shown_window()
        text = self._decoded(self._ids[self._prefix :])
        if text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(shown) :]

    def _shown_window(self) -> str:
        return self._decoded(self._ids[self._prefix : self._read])

    def _decoded(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


def generate_token_ids(
    loaded: LoadedModel,
    prompt_ids: list[int],
    params: SamplingParams,
    max_new_tokens: int,
    seed: int,
    usage: Usage,
    constraint: OutputConstraint | None = None,
) -> Generator[int, None, None]:
    """Sample token ids one by one until an end-of-turn token or `max_new_tokens`.

    The prompt's longest prefix already computed by an earlier call is reused, not recomputed
    (its part before the first user turn also from an earlier process, where the engine can).
    With a `constraint`, tool calls follow their grammar; tokens it forces are fed in one
    forward pass, and a call still open near `max_new_tokens` is steered to its end.
    """
    engine = loaded.engine
    generator = torch.Generator().manual_seed(seed)
    seen = torch.zeros(engine.vocab_size, dtype=torch.float32)  # times each token came
    started = time.monotonic()
    cache = engine.checkout(prompt_ids, loaded.stable_prefix(prompt_ids))
    finish_window = min(FINISH_MARGIN, max_new_tokens // 3)
    try:
        usage.reused_prompt_tokens += cache.length
        logits = engine.forward(prompt_ids[cache.length :], cache)
        usage.prefill_s += time.monotonic() - started
        usage.first_token_s.append(time.monotonic() - started)
        decode_started = time.monotonic()
        produced = 0
        try:
            while produced < max_new_tokens:
                left = max_new_tokens - produced
                step, constrained = _next_tokens(
                    logits, params, seen, generator, constraint, (left, finish_window), usage
                )
                if step[0] in loaded.stop_ids:
                    return
                step = step[: max_new_tokens - produced]
                if constrained:
                    usage.constrained_tokens += len(step)
                    usage.forced_tokens += len(step) - 1
                for token in step:
                    seen[token] += 1
                    yield token
                produced += len(step)
                usage.completion_tokens += len(step)
                logits = engine.forward(step, cache)
        finally:
            usage.decode_s += time.monotonic() - decode_started
    finally:
        engine.checkin(cache)


def _next_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: torch.Tensor,
    generator: torch.Generator,
    constraint: OutputConstraint | None,
    budget: tuple[int, int],
    usage: Usage,
) -> tuple[list[int], bool]:
    """The sampled token plus any tokens the grammar then forces, and whether the grammar had
    a say in them. `budget` is (tokens left, how many left at which an open call is steered
    to its end)."""
    if constraint is None:
        return [sample_next_token(logits, params, seen, generator)], False
    timer = time.monotonic()
    constrained = constraint.active
    left, finish_window = budget
    allowed = constraint.allowed(finishing=left <= finish_window, wrap_up=left <= FINISH_MARGIN)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    usage.constrain_s += time.monotonic() - timer
    token = sample_next_token(logits, params, seen, generator)
    timer = time.monotonic()
    constraint.advance(token)
    forced = constraint.forced()
    for extra in forced:
        constraint.advance(extra)
    usage.constrain_s += time.monotonic() - timer
    return [token, *forced], constrained or bool(forced) or constraint.active


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
    kv_cache_mb, disk_cache_mb, thinking."""

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
        self.constrain = bool(cfg.get("constrain", True))
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
        prompt = self.render_prompt(messages)
        tokenizer = self.loaded.tokenizer
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        max_new = int(generate_cfg.get("max_new_tokens", 2048))
        room = CONTEXT_TOKENS - len(prompt_ids)
        if room <= 0:
            raise GenerationError(
                f"the prompt is {len(prompt_ids)} tokens, over the model's {CONTEXT_TOKENS}-token "
                "context; shorten the conversation or the tool results"
            )
        self.usage.calls += 1
        self.usage.prompt_tokens += len(prompt_ids)
        if prompt.endswith(THINK_PROMPT_SUFFIX):
            # Some templates open the think block in the prompt; keep the output self-contained.
            yield THINK_PROMPT_SUFFIX
        decoder = IncrementalDecoder(tokenizer)
        token_ids = generate_token_ids(
            self.loaded,
            prompt_ids,
            _sampling_params(generate_cfg),
            min(max_new, room),
            int(generate_cfg.get("seed", 0)),
            self.usage,
            self._constraint(generate_cfg, thinking=prompt.endswith(THINK_PROMPT_SUFFIX)),
        )
        for token in token_ids:
            if piece := decoder.push(token):
                yield piece

    def _constraint(self, generate_cfg: dict, thinking: bool) -> ToolCallConstraint | None:
        """The tool-call grammar for this call, when tools are offered and constraining is on."""
        functions = generate_cfg.get(FUNCTIONS_KEY) or []
        if not (self.constrain and functions):
            return None
        loaded = self.loaded
        try:
            tools = grammar_tools(
                loaded.path, loaded.tokenizer, loaded.engine.vocab_size, loaded.stop_ids
            )
        except (OSError, ValueError) as exc:  # e.g. a checkpoint without tokenizer.json
            log.warning("tool calls are not constrained: %s", str(exc).splitlines()[0])
            self.constrain = False
            return None
        choice = generate_cfg.get(TOOL_CHOICE_KEY, AUTO)
        return ToolCallConstraint(tools, functions, choice, thinking)


def _sampling_params(generate_cfg: dict) -> SamplingParams:
    return SamplingParams(
        temperature=float(generate_cfg.get("temperature", 0.7)),
        top_p=float(generate_cfg.get("top_p", 0.8)),
        top_k=int(generate_cfg.get("top_k", 20)),
        min_p=float(generate_cfg.get("min_p", 0.0)),
        presence_penalty=float(generate_cfg.get("presence_penalty", 0.0)),
    )
