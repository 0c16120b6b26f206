"""Key/value caches for the CPU engine, and the LRU of them that lets a call reuse the
longest token prefix an earlier call already computed (agent steps, chat turns, jobs)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import torch

GROWTH_TOKENS = 512  # caches grow by at least this many positions at a time


class KVCache:
    """Keys and values of one token sequence: [layers, kv_heads, capacity, head_dim] each."""

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype
    ) -> None:
        self.keys = torch.empty(layers, kv_heads, capacity, head_dim, dtype=dtype)
        self.values = torch.empty_like(self.keys)
        self.tokens: list[int] = []
        self.unsaved_prefix = 0  # leading positions to keep on disk when the call ends

    @property
    def length(self) -> int:
        """Positions filled (the tokens fed so far)."""
        return len(self.tokens)

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def reserve(self, total: int) -> None:
        """Make room for `total` positions, keeping what is filled."""
        if total <= self.capacity:
            return
        grown = max(total, self.capacity + max(GROWTH_TOKENS, self.capacity // 2))
        keys = self.keys.new_empty(*self.keys.shape[:2], grown, self.keys.shape[3])
        values = torch.empty_like(keys)
        keys[:, :, : self.length] = self.keys[:, :, : self.length]
        values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values = keys, values

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on."""
        del self.tokens[length:]

    def fork(self, length: int, room: int) -> KVCache:
        """A new cache holding a copy of the first `length` positions, with room for `room` more."""
        layers, kv_heads, _, head_dim = self.keys.shape
        copy = KVCache(layers, kv_heads, head_dim, length + room, self.keys.dtype)
        copy.keys[:, :, :length] = self.keys[:, :, :length]
        copy.values[:, :, :length] = self.values[:, :, :length]
        copy.tokens = self.tokens[:length]
        return copy


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class SequenceCache(Protocol):
    """What PrefixCache needs of a cache: the tokens it holds, its size, cut and copy."""

    tokens: list[int]

    @property
    def length(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def truncate(self, length: int) -> None: ...

    def fork(self: C, length: int, room: int) -> C: ...


C = TypeVar("C", bound=SequenceCache)


class PrefixCache(Generic[C]):
    """Caches of finished calls, most recent last, kept under `max_bytes` in all.

    `checkout` hands a caller a cache whose first positions already hold the longest prefix
    of its prompt that any kept cache holds; the caller owns it until `checkin`.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._caches: OrderedDict[int, C] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return sum(cache.nbytes for cache in self._caches.values())

    def __len__(self) -> int:
        return len(self._caches)

    def checkout(self, prompt: list[int], new_cache: Callable[[], C]) -> C:
        """The cache to continue for `prompt`: a kept one extended in place when the prompt
        extends it, a copy of the shared part when it diverges, else a `new_cache()`.

        At least the prompt's last token is always left to compute (its logits are needed).
        """
        with self._lock:
            best_key, best = self._best(prompt)
            if best_key is None:
                return new_cache()
            cache = self._caches[best_key]
            room = len(prompt) - best + GROWTH_TOKENS
            if cache.length - best <= GROWTH_TOKENS:  # a short tail: overwrite it in place
                del self._caches[best_key]
                cache.truncate(best)
                return cache
            return cache.fork(best, room)

    def longest_prefix(self, prompt: list[int]) -> int:
        """How many of `prompt`'s tokens `checkout` would hand over already computed."""
        with self._lock:
            return self._best(prompt)[1]

    def _best(self, prompt: list[int]) -> tuple[int | None, int]:
        best_key, best = None, 0
        for key, cache in self._caches.items():
            shared = min(common_prefix(cache.tokens, prompt), len(prompt) - 1)
            if shared > best:
                best_key, best = key, shared
        return best_key, best

    def checkin(self, cache: C) -> None:
        """Keep `cache` as the most recent, dropping the least recent beyond the budget."""
        if cache.length == 0 or cache.nbytes > self.max_bytes:
            return
        with self._lock:
            self._caches[id(cache)] = cache
            while self.nbytes > self.max_bytes:
                self._caches.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._caches.clear()
