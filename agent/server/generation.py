"""One loaded model serving chat completions to many clients at once.

Requests wait in a bounded queue (a full queue is answered 503 by the app), in arrival order;
up to `max_batch` generate at once, each in its own thread, token by token, their decode steps
batched (agent/server/batching.py); each stops within a token when its client goes.
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
    PromptTooLong,
    Usage,
    generate_text,
    output_constraint,
    prepare_prompt,
)
from agent.engine.loading import LoadedModel, load_local_model
from agent.engine.sampling import SamplingParams
from agent.loop.call_checks import check_call
from agent.server.batching import DecodeBatcher
from agent.server.stream import Delta, OutputSplitter

__all__ = ["Finish", "Generation", "ModelService", "PromptTooLong", "QueueFull"]

log = logging.getLogger("agent")
MAX_BATCH = 8


class QueueFull(Exception):
    """More requests wait than the server takes."""


@dataclass(frozen=True)
class Generation:
    """What one request asks the model for (already checked by the protocol layer)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    tool_choice: str  # "auto", "none", "required", or a tool's name
    thinking: bool
    sampling: SamplingParams
    max_tokens: int
    seed: int
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None  # response_format: the answer is this JSON


@dataclass
class Finish:
    """The end of a generation: why it stopped, and its token counts."""

    reason: str  # "stop", "length", "tool_calls"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass
class ServerStats:
    """What `/metrics` reports, summed since start."""

    running: int = 0
    waiting: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_token_s: list[float] = field(default_factory=list)
    repaired_calls: int = 0
    unparsed_calls: int = 0
    refused_arguments: int = 0  # calls whose arguments their tool's schema refuses
    held_tag_text: int = 0


class ModelService:
    """The model, loaded in the background (`ready` says when), and the request queue: up to
    `max_batch` requests generate at once (their decode steps batched), the others wait in
    arrival order."""

    def __init__(
        self,
        model: str,
        queue_limit: int = 16,
        threads: int | None = None,
        max_batch: int = MAX_BATCH,
        served_name: str | None = None,
    ) -> None:
        self.model = model
        self.model_name = served_name or model  # what clients send as `model`
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

    def waiting_full(self) -> bool:
        """Whether the queue is full (a new request is answered 503)."""
        return self.stats.waiting >= self.queue_limit

    def generate(self, generation: Generation, cancel: threading.Event) -> Iterator[Delta | Finish]:
        """Deltas as the model writes them, then a `Finish`; waits its turn first."""
        ticket = self._enter()
        try:
            yield from self._generate(generation, cancel)
        finally:
            self._leave(ticket)

    def _enter(self) -> int:
        with self._turn:
            if self.waiting_full():
                raise QueueFull
            ticket = self._next_ticket
            self._next_ticket += 1
            self._tickets.append(ticket)
            self.stats.waiting += 1
            while self._tickets.index(ticket) >= self.max_batch:
                self._turn.wait()
            self.stats.waiting -= 1
            self.stats.running += 1
        return ticket

    def _leave(self, ticket: int) -> None:
        with self._turn:
            self._tickets.remove(ticket)
            self.stats.running -= 1
            self._turn.notify_all()

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

    def _generate(
        self, generation: Generation, cancel: threading.Event
    ) -> Iterator[Delta | Finish]:
        assert self.loaded is not None
        started = time.monotonic()
        prompt = prepare_prompt(self.loaded, self._prompt(generation), generation.max_tokens)
        usage = Usage()
        splitter = OutputSplitter(calls=bool(generation.tools))
        pieces = generate_text(
            self.loaded,
            prompt,
            generation.sampling,
            generation.seed,
            usage,
            self._constraint(generation, prompt.opened_think),
        )
        stops = StopWatch(generation.stop)
        reason, first_delta = "stop", True
        calls: dict[int, list[str]] = {}  # index: [name, arguments so far]
        try:
            for piece in pieces:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                shown = stops.feed(piece)
                for delta in splitter.feed(shown) if shown else []:
                    if first_delta:
                        self.stats.first_token_s.append(time.monotonic() - started)
                        first_delta = False
                    _collect(calls, delta)
                    yield delta
                if stops.hit:
                    break
            else:
                reason = "length" if usage.completion_tokens >= prompt.limit else "stop"
        finally:
            pieces.close()
        for delta in [*splitter.feed(stops.flush()), *splitter.finish()]:
            _collect(calls, delta)
            yield delta
        refused = _refused(calls, generation.tools or [])
        with self._turn:  # several requests finish at once when batched
            self._add_counts(splitter, len(prompt.ids), usage)
            self.stats.refused_arguments += refused
        yield Finish(
            reason="tool_calls" if calls and reason == "stop" else reason,
            prompt_tokens=len(prompt.ids),
            cached_tokens=usage.reused_prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )

    def _add_counts(self, splitter: OutputSplitter, prompt_tokens: int, usage: Usage) -> None:
        self.stats.requests += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += usage.completion_tokens
        self.stats.cached_tokens += usage.reused_prompt_tokens
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
        return output_constraint(
            self.loaded, functions, choice, thinking, json_schema=generation.json_schema
        )


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
