"""Decode steps of concurrent requests, batched: one forward pass for every sequence waiting
for its next token, so the weights are read once for all of them.

Each request still runs `generate_token_ids` in its own thread, unchanged; its engine is this
wrapper. A one-token `forward`, or a `verify` of a decoded token and its drafted ones
(agent/engine/lookup.py), waits (at most `wait_s`) for the other active sequences to reach
theirs, then one of them runs the batch and hands each its logits: on an engine that verifies
drafts, one pass of every sequence's block (`verify_blocks`), each bit for bit what it gets
alone. Prompts (several tokens to prefill) run alone. Sequences join at `checkout` and leave
at `checkin`, as they start and end.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

WAIT_S = 0.005  # how long a step waits for the others before the batch runs without them


@dataclass
class _Step:
    tokens: list[int]  # one decoded token, then any drafted ones
    cache: Any
    logits: torch.Tensor | None = None  # [len(tokens), vocab]
    error: BaseException | None = None


class DecodeBatcher:
    """An engine (`checkout`, `checkin`, `forward`) over one with `forward_batch`."""

    def __init__(self, engine: Any, wait_s: float = WAIT_S) -> None:
        self.engine = engine
        self.vocab_size = engine.vocab_size
        self.wait_s = wait_s
        self.batches = 0  # forward passes run for decode steps
        self.batched_steps = 0  # decode steps they served
        self.batched_verifications = 0  # of which verifications of drafted tokens
        self._engine = threading.Lock()  # the engine runs one pass at a time
        self._turn = threading.Condition()
        self._pending: list[_Step] = []
        self._active = 0
        self._leading = False

    def checkout(self, prompt: list[int], stable: int = 0) -> Any:
        """A cache for `prompt` (see the engine's); the sequence is active from now on."""
        with self._turn:
            self._active += 1
        with self._engine:
            return self.engine.checkout(prompt, stable)

    def checkin(self, cache: Any) -> None:
        """The sequence has ended; its cache goes back for prefix reuse."""
        with self._engine:
            self.engine.checkin(cache)
        with self._turn:
            self._active -= 1
            self._turn.notify_all()

    @property
    def verifies_drafts(self) -> bool:
        """Whether the engine checks drafted tokens exactly (see `verify`)."""
        return bool(getattr(self.engine, "verifies_drafts", False))

    def verify(self, tokens: list[int], cache: Any) -> torch.Tensor:
        """The logits after each of `tokens` (a decoded token and its draft), from the next
        batch."""
        return self._join(tokens, cache)

    def forward(self, tokens: list[int], cache: Any) -> torch.Tensor:
        """The logits after `tokens`; a single token joins the next batch."""
        if len(tokens) != 1:
            with self._engine:
                return self.engine.forward(tokens, cache)
        return self._join(tokens, cache)[-1]

    def _join(self, tokens: list[int], cache: Any) -> torch.Tensor:
        """The logits after each of `tokens`, from the batch this step joins."""
        step = _Step(tokens, cache)
        with self._turn:
            self._pending.append(step)
            self._turn.notify_all()
            while step.logits is None and step.error is None:
                if self._leading:
                    self._turn.wait()
                else:
                    self._lead()
        if step.error is not None:
            raise step.error
        return step.logits  # type: ignore[return-value]

    def _lead(self) -> None:
        """Run the pending steps as one batch (called holding `_turn`, released meanwhile)."""
        self._leading = True
        deadline = time.monotonic() + self.wait_s
        while len(self._pending) < self._active and (left := deadline - time.monotonic()) > 0:
            self._turn.wait(left)
        batch, self._pending = self._pending, []
        self._turn.release()
        try:
            with self._engine:
                if self.verifies_drafts:
                    logits = self.engine.verify_blocks([(s.tokens, s.cache) for s in batch])
                else:  # single tokens only: drafts are verified only where verifies_drafts
                    tokens, caches = [s.tokens[0] for s in batch], [s.cache for s in batch]
                    logits = self.engine.forward_batch(tokens, caches)[:, None]
            for step, step_logits in zip(batch, logits, strict=True):
                step.logits = step_logits
        except BaseException as exc:  # every waiting step gets it
            for step in batch:
                step.error = exc
        finally:
            self._turn.acquire()
            self._leading = False
            self.batches += 1
            self.batched_steps += len(batch)
            self.batched_verifications += sum(len(step.tokens) > 1 for step in batch)
            self._turn.notify_all()
