"""Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the answer's
last few tokens in the context (the prompt, its tool results, the answer so far).

An agent's answer often quotes its tool results (a time, a path, a JSON field, a page's
sentence): once its first tokens are written, the rest is already in the context. The engine
verifies a draft in one pass (agent/engine/generate.py), so each accepted token saves a decode
step. Where drafts keep failing, or verifying them takes longer than the steps they save,
`DraftLength` stops drafting, retrying now and then.
"""

from __future__ import annotations

from dataclasses import dataclass

NGRAM_SIZES = (3, 2)  # the longest match is tried first; one token alone matches too loosely
MAX_DRAFT = 8  # drafted tokens per verification, at most
FIRST_DRAFT = 1  # a probe: a miss costs least, a hit doubles the next draft
MISSES_TO_PAUSE = 3  # drafts in a row with nothing accepted before drafting pauses
FIRST_PAUSE = 16  # tokens decoded plainly after such misses; doubled at each pause in a row
LONGEST_PAUSE = 256


class NgramIndex:
    """A growing token sequence, and where each of its n-grams (n in NGRAM_SIZES) last
    occurred with a token after it."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self._next: dict[tuple[int, ...], int] = {}  # n-gram: the index of the token after it
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        """Append `tokens`."""
        for token in tokens:
            end = len(self.tokens)
            for n in NGRAM_SIZES:
                if end >= n:
                    self._next[tuple(self.tokens[end - n : end])] = end
            self.tokens.append(token)

    def continuation(self, limit: int) -> list[int]:
        """`limit` tokens that followed the latest earlier occurrence of the sequence's last n
        tokens, for the longest n that occurred before ([] where none did). Where they run
        into the sequence's end, the text repeats itself: the draft goes on copying itself."""
        for n in NGRAM_SIZES:
            if len(self.tokens) <= n:
                continue
            start = self._next.get(tuple(self.tokens[-n:]))
            if start is not None:
                draft = self.tokens[start : start + limit]
                period = len(self.tokens) - start
                while len(draft) < limit:
                    draft.append(draft[len(draft) - period])
                return draft
        return []


@dataclass
class DraftLength:
    """How many tokens to draft next: twice as many while drafts are accepted whole, one more
    than were accepted after a rejection, none for a while after `MISSES_TO_PAUSE` drafts in a
    row that missed (accepted nothing, or left drafting's time balance in the red: text that
    does not quote its context, or a machine where verifying costs more than it saves), then
    one try again."""

    length: int = FIRST_DRAFT
    misses: int = 0
    paused_for: int = 0  # tokens still to decode before drafting again
    pause: int = FIRST_PAUSE  # the next pause's length
    balance_s: float = 0.0  # time drafting saved this generation (negative: lost)

    def allowed(self) -> int:
        """Tokens to draft now (0: decode plainly)."""
        return 0 if self.paused_for else self.length

    def decoded(self, tokens: int) -> None:
        """`tokens` were decoded without a draft."""
        self.paused_for = max(0, self.paused_for - tokens)

    def verified(self, drafted: int, accepted: int, saved_s: float | None) -> None:
        """A draft of `drafted` tokens had its first `accepted` accepted; `saved_s` is the
        time it saved against plain steps (None: not timed)."""
        if accepted == drafted:
            self.length = min(MAX_DRAFT, 2 * self.length)
        else:
            self.length = max(1, accepted + 1)
        self.balance_s += saved_s or 0.0
        if accepted and (saved_s is None or self.balance_s > 0):
            self.misses, self.pause = 0, FIRST_PAUSE
            return
        self.misses += 1
        if self.misses >= MISSES_TO_PAUSE:
            self.paused_for, self.misses = self.pause, MISSES_TO_PAUSE - 1  # one try after it
            self.pause = min(LONGEST_PAUSE, 2 * self.pause)


@dataclass
class StepTime:
    """The mean time of this generation's plain decode steps: what a verification's tokens
    would have cost without it."""

    total_s: float = 0.0
    steps: int = 0

    def add(self, seconds: float) -> None:
        self.total_s += seconds
        self.steps += 1

    def saved(self, seconds: float, tokens: int) -> float | None:
        """What a pass of `seconds` giving `tokens` tokens saved against plain steps (None
        before any step was timed)."""
        return tokens * self.total_s / self.steps - seconds if self.steps else None


class LookupDrafter:
    """Drafts for one generation: the context's continuation of its last tokens, as long as
    `DraftLength` allows."""

    def __init__(self, prompt: list[int]) -> None:
        self.context = NgramIndex(prompt)
        self.length = DraftLength()
        self.step = StepTime()

    def draft(self, room: int) -> list[int]:
        """The tokens to verify after the ones generated so far (at most `room`)."""
        limit = min(room, self.length.allowed())
        return self.context.continuation(limit) if limit > 0 else []

    def generated(
        self, tokens: list[int], drafted: int, accepted: int, seconds: float | None = None
    ) -> None:
        """`tokens` were generated after a draft of `drafted` tokens (0: none) of which the
        first `accepted` were taken; `seconds`: how long the forward pass that gave them took,
        where it fed one decoded token (and the draft)."""
        self.context.extend(tokens)
        if not drafted:
            if seconds is not None:
                self.step.add(seconds)
            self.length.decoded(len(tokens))
            return
        saved = None if seconds is None else self.step.saved(seconds, accepted + 1)
        self.length.verified(drafted, accepted, saved)
