"""One model call, from prompt text to text pieces: the one path the local LLM class
(agent/backends/local.py) and the server (agent/server/generation.py) both take.

`prepare_prompt` tokenizes the prompt and checks it leaves room in the context window;
`generate_text` streams the text (the think tag the template opened first, then each token's
text as soon as it is whole), over `generate_token_ids`, which samples token by token with the
prefix caches, an optional grammar (`output_constraint`) and the usage counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import torch

from agent.config import CONTEXT_TOKENS
from agent.engine.constrained import (
    JsonOutputConstraint,
    OutputConstraint,
    ToolCallConstraint,
    grammar_tools,
)
from agent.engine.loading import LoadedModel
from agent.engine.lookup import LookupDrafter
from agent.engine.sampling import (
    SamplingParams,
    adjusted_logits,
    sample_adjusted,
    token_logprobs,
    verify_drafted,
)
from agent.errors import GenerationError

THINK_PROMPT_SUFFIX = "<think>\n"
FINISH_MARGIN = 64  # tokens before the limit at which an open tool call is steered to its end


class PromptTooLong(GenerationError):
    """The prompt leaves no room in the context window."""

    def __init__(self, tokens: int) -> None:
        super().__init__(
            f"the prompt is {tokens} tokens, over the model's {CONTEXT_TOKENS}-token context; "
            "shorten the conversation or the tool results"
        )
        self.tokens = tokens


@dataclass(frozen=True)
class Prompt:
    """A prompt ready to generate from: its token ids, how many new tokens it has room for,
    and whether the chat template opened a think block at its end."""

    ids: list[int]
    limit: int
    opened_think: bool


def prepare_prompt(loaded: LoadedModel, text: str, max_new_tokens: int) -> Prompt:
    """`text` tokenized; `PromptTooLong` when it leaves no room in the context window."""
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    room = CONTEXT_TOKENS - len(ids)
    if room <= 0:
        raise PromptTooLong(len(ids))
    return Prompt(ids, min(max_new_tokens, room), text.endswith(THINK_PROMPT_SUFFIX))


def generate_text(
    loaded: LoadedModel,
    prompt: Prompt,
    params: SamplingParams,
    seed: int,
    usage: Usage,
    constraint: OutputConstraint | None = None,
    scores: LogprobLog | None = None,
    lookup: bool = True,
) -> Generator[str, None, None]:
    """The model's text as it is written: the think tag the template opened (so the output is
    self-contained), then each token's text once whole. Closing the iterator stops generation.
    `scores` records each token's log-probability as it comes; `lookup` lets drafts from the
    context be verified (see `generate_token_ids`)."""
    usage.calls += 1
    usage.prompt_tokens += len(prompt.ids)
    if prompt.opened_think:
        yield THINK_PROMPT_SUFFIX
    decoder = IncrementalDecoder(loaded.tokenizer)
    tokens = generate_token_ids(
        loaded, prompt.ids, params, prompt.limit, seed, usage, constraint, scores, lookup
    )
    try:
        for token in tokens:
            if piece := decoder.push(token):
                yield piece
    finally:
        tokens.close()


def output_constraint(
    loaded: LoadedModel,
    functions: list[dict[str, Any]],
    choice: str,
    thinking: bool,
    json_schema: dict[str, Any] | None = None,
    parallel: bool = True,
) -> OutputConstraint:
    """The grammar of one call: tool calls that fit `functions` under `choice` (one at most
    without `parallel`), or (with `json_schema`) an answer that is that JSON. OSError or
    ValueError where the checkpoint's tokenizer cannot be read for it or the schema compiled."""
    tools = grammar_tools(loaded.path, loaded.tokenizer, loaded.engine.vocab_size, loaded.stop_ids)
    if json_schema is not None:
        return JsonOutputConstraint(tools, json_schema, thinking)
    return ToolCallConstraint(tools, functions, choice, thinking, parallel)


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
    verifications: int = 0  # forward passes that checked a drafted continuation (lookup)
    drafted_tokens: int = 0  # tokens those drafts proposed
    accepted_tokens: int = 0  # drafted tokens taken: each a decode step saved
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


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability, and the likeliest tokens at its place."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class LogprobLog:
    """The log-probabilities of the tokens generated, in order, each with its `top` likeliest
    alternatives; tokens the grammar forces had no alternative (log-probability 0)."""

    top: int = 0
    tokens: list[TokenLogprob] = field(default_factory=list)

    def add(self, token: int, logprobs: torch.Tensor | None) -> None:
        """Record `token`, drawn from `logprobs` (None: forced, the only token allowed)."""
        if logprobs is None:
            self.tokens.append(TokenLogprob(token, 0.0, ((token, 0.0),)[: self.top]))
            return
        values, ids = torch.topk(logprobs, self.top)
        top = tuple(
            (int(i), float(v))
            for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            if v > float("-inf")
        )
        self.tokens.append(TokenLogprob(token, float(logprobs[token]), top))


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
    scores: LogprobLog | None = None,
    lookup: bool = True,
) -> Generator[int, None, None]:
    """Sample token ids one by one until an end-of-turn token or `max_new_tokens`.

    The prompt's longest prefix already computed by an earlier call is reused, not recomputed
    (its part before the first user turn also from an earlier process, where the engine can).
    With a `constraint`, tool calls follow their grammar; tokens it forces are fed in one
    forward pass, and a call still open near `max_new_tokens` is steered to its end.
    With `lookup`, where the engine verifies drafts exactly, tokens drafted from the context
    (agent/engine/lookup.py) are checked in one pass with the token before them; the output is
    distributed exactly as without (greedy: the same tokens).
    `scores` records the log-probability of each token yielded.
    """
    engine = loaded.engine
    generator = torch.Generator().manual_seed(seed)
    seen = torch.zeros(engine.vocab_size, dtype=torch.float32)  # times each token came
    started = time.monotonic()
    cache = engine.checkout(prompt_ids, loaded.stable_prefix(prompt_ids))
    choose = _Chooser(
        params, seen, generator, constraint, usage, scores is not None, loaded.stop_ids
    )
    verify = _draft_verifier(engine) if lookup else None
    drafter = LookupDrafter(prompt_ids) if verify is not None else None
    try:
        usage.reused_prompt_tokens += cache.length
        logits = engine.forward(prompt_ids[cache.length :], cache)
        usage.prefill_s += time.monotonic() - started
        usage.first_token_s.append(time.monotonic() - started)
        decode_started = time.monotonic()
        produced = 0
        rows, draft = logits[None], list[int]()
        timed: float | None = None  # the last pass's seconds, where it fed one decoded token
        try:
            while produced < max_new_tokens:
                chosen = choose.round(rows, draft, (max_new_tokens - produced, max_new_tokens))
                cache.truncate(cache.length - len(draft) + chosen.accepted)
                for token, logprobs in chosen.tokens:
                    if scores is not None:
                        scores.add(token, logprobs)
                    yield token
                produced += len(chosen.tokens)
                usage.completion_tokens += len(chosen.tokens)
                if chosen.stopped:
                    return
                fed = [token for token, _ in chosen.tokens[chosen.accepted :]]
                if drafter is not None:
                    tokens = [token for token, _ in chosen.tokens]
                    drafter.generated(tokens, len(draft), chosen.accepted, timed)
                    draft = _drafted(drafter, constraint, fed, max_new_tokens - produced)
                started_pass = time.perf_counter()
                if draft and verify is not None:
                    usage.verifications += 1
                    usage.drafted_tokens += len(draft)
                    rows = verify(fed + draft, cache)
                else:
                    rows = engine.forward(fed, cache)[None]
                timed = time.perf_counter() - started_pass if len(fed) == 1 else None
        finally:
            usage.decode_s += time.monotonic() - decode_started
    finally:
        engine.checkin(cache)


def _draft_verifier(engine: Any) -> Callable[[list[int], Any], torch.Tensor] | None:
    """The engine's `verify` where it checks drafts exactly (the native engine's fused step)."""
    return engine.verify if getattr(engine, "verifies_drafts", False) else None


def _drafted(
    drafter: LookupDrafter, constraint: OutputConstraint | None, fed: list[int], left: int
) -> list[int]:
    """The draft to verify after `fed` (only after a single token: tokens the grammar forced
    go through the model as plain decoding feeds them), that the grammar allows."""
    if len(fed) != 1:
        return []
    draft = drafter.draft(left - 1)
    if constraint is not None and draft:
        draft = draft[: constraint.draftable(draft)]
    return draft


@dataclass
class _Round:
    """The tokens chosen from one forward pass's rows, each with the log-probabilities it was
    drawn from (None: forced); how many were the draft's; whether an end-of-turn token came."""

    tokens: list[tuple[int, torch.Tensor | None]] = field(default_factory=list)
    accepted: int = 0
    stopped: bool = False


@dataclass
class _Chooser:
    """Chooses tokens from logits, row after row: the penalties see the tokens chosen before
    each row, and the grammar advances over the chosen tokens only."""

    params: SamplingParams
    seen: torch.Tensor
    generator: torch.Generator
    constraint: OutputConstraint | None
    usage: Usage
    scored: bool
    stop_ids: frozenset[int]

    def round(self, rows: torch.Tensor, draft: list[int], budget: tuple[int, int]) -> _Round:
        """The tokens from `rows` (row i: the logits at the place `draft[i]` was proposed for;
        the last row: after the whole draft): drafted tokens while each is what was chosen,
        then the first other choice and the tokens the grammar forces after it. `budget` is
        (tokens left, the generation's limit)."""
        left, limit = budget
        finish_window = min(FINISH_MARGIN, limit // 3)
        chosen = _Round()
        for row, logits in enumerate(rows):
            proposed = draft[row] if row < len(draft) else None
            room = left - len(chosen.tokens)
            step, constrained, logprobs = _next_tokens(
                logits, self.params, self.seen, self.generator, self.constraint,
                (room, finish_window), self.usage, self.scored, proposed,
            )  # fmt: skip
            if step[0] in self.stop_ids:
                chosen.stopped = True
                return chosen
            step = step[:room]
            if constrained:
                self.usage.constrained_tokens += len(step)
                self.usage.forced_tokens += len(step) - 1
            for position, token in enumerate(step):
                self.seen[token] += 1
                chosen.tokens.append((token, None if position else logprobs))
            if step != [proposed] or len(step) == room:
                return chosen
            chosen.accepted += 1
            self.usage.accepted_tokens += 1
        return chosen


def _next_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: torch.Tensor,
    generator: torch.Generator,
    constraint: OutputConstraint | None,
    budget: tuple[int, int],
    usage: Usage,
    scored: bool = False,
    proposed: int | None = None,
) -> tuple[list[int], bool, torch.Tensor | None]:
    """The sampled token plus any tokens the grammar then forces, whether the grammar had
    a say in them, and (when `scored`) the log-probabilities the first was drawn from.
    `budget` is (tokens left, how many left at which an open call is steered to its end);
    `proposed` is the draft's token for this place, if any (see `verify_drafted`)."""
    if constraint is None:
        token, logprobs = _sampled(logits, params, seen, generator, scored, proposed)
        return [token], False, logprobs
    timer = time.monotonic()
    constrained = constraint.active
    left, finish_window = budget
    allowed = constraint.allowed(finishing=left <= finish_window, wrap_up=left <= FINISH_MARGIN)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    usage.constrain_s += time.monotonic() - timer
    token, logprobs = _sampled(logits, params, seen, generator, scored, proposed)
    timer = time.monotonic()
    constraint.advance(token)
    forced = constraint.forced()
    for extra in forced:
        constraint.advance(extra)
    usage.constrain_s += time.monotonic() - timer
    return [token, *forced], constrained or bool(forced) or constraint.active, logprobs


def _sampled(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: torch.Tensor,
    generator: torch.Generator,
    scored: bool,
    proposed: int | None,
) -> tuple[int, torch.Tensor | None]:
    """The sampled token (at a drafted place, by the draft's rule), and (when `scored`) the
    log-probabilities it was drawn from: the penalties and bias applied once for both."""
    adjusted = adjusted_logits(logits, params, seen)
    logprobs = token_logprobs(adjusted, params) if scored else None
    if proposed is not None:
        return verify_drafted(adjusted, params, proposed, generator), logprobs
    return sample_adjusted(adjusted, params, generator), logprobs
