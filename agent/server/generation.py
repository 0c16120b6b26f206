"""One loaded model serving chat completions to many clients at once.

A request is admitted before its answer starts (`admit`: its prompt fits the context, its
grammar compiles, the queue has room, or the app answers with the error status), then waits
in arrival order; up to `max_batch` generate at once, each in its own thread, token by token,
their decode steps batched (agent/server/batching.py); each stops within a token when its
client goes.
The local backend's prefix cache makes a request that shares a prompt prefix with an earlier
one (a system prompt, tool schemas, the conversation so far) skip that part of the prefill.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from agent.engine.constrained import OutputConstraint
from agent.engine.generate import (
    LogprobLog,
    Prompt,
    PromptTooLong,
    TokenLogprob,
    Usage,
    generate_text,
    output_constraint,
    prepare_prompt,
)
from agent.engine.loading import LoadedModel, load_local_model
from agent.engine.sampling import SamplingParams
from agent.loop.call_checks import check_call
from agent.server.batching import DecodeBatcher
from agent.server.stream import CONTENT, Delta, OutputSplitter

__all__ = [
    "BadGeneration", "Finish", "Generation", "Job", "ModelService", "PromptTooLong", "QueueFull",
    "Scores",
]  # fmt: skip

log = logging.getLogger("agent")
MAX_BATCH = 8


class QueueFull(Exception):
    """More requests wait than the server takes."""


class BadGeneration(Exception):
    """A request the loaded model cannot serve (a token id it lacks, a schema its grammar
    cannot compile); the message says which."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Generation:
    """What one choice asks the model for (already checked by the protocol layer)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tool_choice: str  # "auto", "none", "required", or a tool's name
    thinking: bool
    sampling: SamplingParams
    max_tokens: int
    seed: int
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None  # response_format: the answer is this JSON
    parallel_tool_calls: bool = True
    logprobs: int | None = None  # None: off; else how many alternatives per token
    text: str | None = None  # a raw prompt (/v1/completions): no template, no splitting


@dataclass(frozen=True)
class Job:
    """A generation prepared (its prompt checked, its grammar built) and, once enqueued, its
    place in the queue."""

    generation: Generation
    prompt: Prompt
    constraint: OutputConstraint | None
    ticket: int = -1


@dataclass(frozen=True)
class Scores:
    """The log-probabilities of tokens generated since the last item."""

    tokens: list[TokenLogprob]


@dataclass
class Finish:
    """The end of a generation: why it stopped, and its token counts."""

    reason: str  # "stop", "length", "tool_calls", "cancelled"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass
class Timing:
    """A running count and sum (a Prometheus summary without quantiles): constant memory."""

    count: int = 0
    total: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds


@dataclass
class ServerStats:
    """What `/metrics` reports, summed since start."""

    running: int = 0
    waiting: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_token: Timing = field(default_factory=Timing)
    repaired_calls: int = 0
    unparsed_calls: int = 0
    refused_arguments: int = 0  # calls whose arguments their tool's schema refuses
    held_tag_text: int = 0


class ModelService:
    """The model, loaded in the background (`ready` says when), and the request queue: up to
    `max_batch` requests generate at once (their decode steps batched), up to `queue_limit`
    more wait in arrival order."""

    def __init__(
        self,
        model: str,
        queue_limit: int = 16,
        threads: int | None = None,
        max_batch: int = MAX_BATCH,
        served_name: str | None = None,
        lookup: bool = True,
    ) -> None:
        self.model = model
        self.lookup = lookup  # lookup decoding (agent/engine/lookup.py)
        self.model_name = served_name or model  # what clients send as `model`
        self.created = int(time.time())
        self.queue_limit = queue_limit
        self.max_batch = max_batch
        self.stats = ServerStats()
        self.loaded: LoadedModel | None = None
        self.load_error: str | None = None
        self._turn = threading.Condition()
        self._tickets: list[int] = []
        self._next_ticket = 0
        self._threads = threads

    def load(self) -> None:
        """Load the model (blocking); errors are kept for `/health`."""
        try:
            loaded = load_local_model(self.model, threads=self._threads)
            if self.max_batch > 1 and hasattr(loaded.engine, "forward_batch"):
                loaded = replace(loaded, engine=DecodeBatcher(loaded.engine))
            self.loaded = loaded
        except Exception as exc:  # reported by /health and each request
            self.load_error = str(exc)
            log.error("error: %s", exc)

    @property
    def ready(self) -> bool:
        """Whether the model is loaded."""
        return self.loaded is not None

    def admit(self, generations: list[Generation]) -> list[Job]:
        """`prepare`, then `enqueue`."""
        return self.enqueue(self.prepare(generations))

    def prepare(self, generations: list[Generation]) -> list[Job]:
        """The choices of one request, checked (blocking: it tokenizes): `PromptTooLong` or
        `BadGeneration` before anything is generated."""
        return [Job(g, *self._prepare(g)) for g in generations]

    def enqueue(self, jobs: list[Job]) -> list[Job]:
        """The jobs with their places in the queue, all or none: `QueueFull` when there is no
        room. It never blocks, so a caller can answer at once."""
        with self._turn:
            if len(self._tickets) + len(jobs) > self.max_batch + self.queue_limit:
                raise QueueFull
            tickets = range(self._next_ticket, self._next_ticket + len(jobs))
            self._next_ticket += len(jobs)
            self._tickets.extend(tickets)
            self._count()
        return [replace(job, ticket=ticket) for job, ticket in zip(jobs, tickets, strict=True)]

    def generate(self, job: Job, cancel: threading.Event) -> Iterator[Delta | Scores | Finish]:
        """Deltas (and scores, when asked for) as the model writes them, then a `Finish`;
        waits its turn first."""
        try:
            with self._turn:
                while self._tickets.index(job.ticket) >= self.max_batch:
                    self._turn.wait()
            yield from self._generate(job, cancel)
        finally:
            with self._turn:
                self._tickets.remove(job.ticket)
                self._count()
                self._turn.notify_all()

    def _count(self) -> None:
        self.stats.running = min(len(self._tickets), self.max_batch)
        self.stats.waiting = len(self._tickets) - self.stats.running

    def _prepare(self, generation: Generation) -> tuple[Prompt, OutputConstraint | None]:
        assert self.loaded is not None
        vocab = self.loaded.engine.vocab_size
        if any(not 0 <= token < vocab for token, _ in generation.sampling.logit_bias):
            raise BadGeneration(f"logit_bias: token ids must be below {vocab}", "logit_bias")
        text = generation.text if generation.text is not None else self._prompt(generation)
        prompt = prepare_prompt(self.loaded, text, generation.max_tokens)
        try:
            return prompt, self._constraint(generation, prompt.opened_think)
        except ValueError as exc:
            raise BadGeneration(f"response_format: {exc}", "response_format") from None

    def _prompt(self, generation: Generation) -> str:
        assert self.loaded is not None
        return str(
            self.loaded.tokenizer.apply_chat_template(
                generation.messages,
                tools=generation.tools or None,
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=generation.thinking,
            )
        )

    def _generate(self, job: Job, cancel: threading.Event) -> Iterator[Delta | Scores | Finish]:
        assert self.loaded is not None
        generation, prompt = job.generation, job.prompt
        started = time.monotonic()
        usage = Usage()
        splitter = (
            None if generation.text is not None else OutputSplitter(calls=bool(generation.tools))
        )
        scores = LogprobLog(generation.logprobs) if generation.logprobs is not None else None
        pieces = generate_text(self.loaded, prompt, generation.sampling, generation.seed, usage,
                               job.constraint, scores, self.lookup)  # fmt: skip
        stops = StopWatch(generation.stop)
        reason, scored, first_s = "stop", 0, None
        calls: dict[int, list[str]] = {}  # index: [name, arguments so far]
        try:
            for piece in pieces:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                if scores is not None and len(scores.tokens) > scored:
                    yield Scores(scores.tokens[scored:])
                    scored = len(scores.tokens)
                for delta in _split(splitter, stops.feed(piece)):
                    first_s = first_s or time.monotonic() - started
                    _collect(calls, delta)
                    yield delta
                if stops.hit:
                    break
            else:
                reason = "length" if usage.completion_tokens >= prompt.limit else "stop"
        finally:
            pieces.close()
        if scores is not None and len(scores.tokens) > scored:
            yield Scores(scores.tokens[scored:])
        for delta in _split(splitter, stops.flush(), final=True):
            _collect(calls, delta)
            yield delta
        refused = _refused(calls, generation.tools or [])
        with self._turn:  # several requests finish at once when batched
            self._add_counts(splitter, len(prompt.ids), usage)
            self.stats.refused_arguments += refused
            if first_s is not None:
                self.stats.first_token.add(first_s)
        yield Finish(
            reason="tool_calls" if calls and reason == "stop" else reason,
            prompt_tokens=len(prompt.ids),
            cached_tokens=usage.reused_prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )

    def _add_counts(
        self, splitter: OutputSplitter | None, prompt_tokens: int, usage: Usage
    ) -> None:
        self.stats.requests += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += usage.completion_tokens
        self.stats.cached_tokens += usage.reused_prompt_tokens
        if splitter is not None:
            self.stats.repaired_calls += splitter.repaired_calls
            self.stats.unparsed_calls += splitter.unparsed_calls
            self.stats.held_tag_text += splitter.held_tag_text

    def _constraint(self, generation: Generation, thinking: bool) -> OutputConstraint | None:
        if not generation.tools and generation.json_schema is None:
            return None
        assert self.loaded is not None
        functions = [tool["function"] for tool in generation.tools or []]
        choice = generation.tool_choice
        if choice not in ("auto", "none", "required"):  # a named tool: only it, and required
            functions = [f for f in functions if f.get("name") == choice]
            choice = "required"
        return output_constraint(self.loaded, functions, choice, thinking,
                                 json_schema=generation.json_schema,
                                 parallel=generation.parallel_tool_calls)  # fmt: skip


def _split(splitter: OutputSplitter | None, text: str, final: bool = False) -> list[Delta]:
    """The deltas of `text`: reasoning, content and calls, or (no splitter) content as it is."""
    if splitter is None:
        return [Delta(CONTENT, text)] if text else []
    return [*(splitter.feed(text) if text else []), *(splitter.finish() if final else [])]


def _collect(calls: dict[int, list[str]], delta: Delta) -> None:
    if delta.kind == "tool_call":
        call = calls.setdefault(delta.index, [delta.name or "", ""])
        call[1] += delta.text


def _refused(calls: dict[int, list[str]], tools: list[dict[str, Any]]) -> int:
    """How many of the calls name no tool offered, or have arguments its schema refuses."""
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    return sum(
        name not in schemas or check_call(name, arguments, schemas[name]).arguments is None
        for name, arguments in calls.values()
    )


class StopWatch:
    """Cuts the output at the first stop sequence; text that may be the start of one is held
    until the next piece decides."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.hit = False
        self._held = ""

    def feed(self, piece: str) -> str:
        """What of `piece` (and of what was held) may be shown now."""
        text, self._held = self._held + piece, ""
        found = [text.find(stop) for stop in self.stops if stop in text]
        if found:
            self.hit = True
            return text[: min(found)]
        keep = max((n for stop in self.stops for n in range(1, len(stop))
                    if text.endswith(stop[:n])), default=0)  # fmt: skip
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held, once the output has ended."""
        held, self._held = self._held, ""
        return "" if self.hit else held
