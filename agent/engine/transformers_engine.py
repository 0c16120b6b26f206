"""The transformers model behind the same engine interface as the CPU engine.

Used on CUDA (GPTQModel picks a GPU kernel: Marlin, ExLlama ...) and, with `--engine
transformers`, on CPU as the reference the CPU engine is checked against. Prefix reuse works
the same way: transformers' DynamicCache, cropped or copied, held by the same LRU.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from transformers import DynamicCache

from agent.engine.kv_cache import PrefixCache


class TransformersCache:
    """A DynamicCache with the token ids it holds (the interface PrefixCache expects)."""

    def __init__(self, config: Any) -> None:
        self.past = DynamicCache(config=config)
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        tensors = (
            getattr(layer, name, None) for layer in self.past.layers for name in ("keys", "values")
        )
        return sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))

    def truncate(self, length: int) -> None:
        if length < self.length:
            self.past.crop(length - self.length)  # transformers 5: a negative count to remove
            del self.tokens[length:]

    def fork(self, length: int, room: int) -> TransformersCache:
        del room  # a DynamicCache grows as it goes
        forked = copy.deepcopy(self)
        forked.truncate(length)
        return forked


class TransformersEngine:
    """A transformers causal LM, fed token by token, reusing cached prompt prefixes."""

    def __init__(self, model: Any, prefix_cache_bytes: int) -> None:
        self.model = model
        self.vocab_size = int(model.config.vocab_size)
        self.prefix_cache: PrefixCache[TransformersCache] = PrefixCache(prefix_cache_bytes)
        params = inspect.signature(model.forward).parameters
        # transformers 5.x renamed `past_key_values` to `cache` in some releases.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def checkout(self, prompt: list[int], stable: int = 0) -> TransformersCache:
        """A cache for `prompt`, already holding the longest prefix any earlier call computed
        in this process (`stable` is for engines that keep prefixes on disk too)."""
        del stable
        return self.prefix_cache.checkout(prompt, lambda: TransformersCache(self.model.config))

    def checkin(self, cache: TransformersCache) -> None:
        """Give the cache back so later calls can reuse its prefix."""
        self.prefix_cache.checkin(cache)

    def forward(self, tokens: list[int], cache: TransformersCache) -> torch.Tensor:
        """Feed `tokens` after what `cache` holds; the float32 logits after the last one."""
        with torch.inference_mode():
            inputs = torch.tensor([tokens], device=self.model.device)
            out = self.model(
                input_ids=inputs, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache.past}
            )
        cache.tokens.extend(tokens)
        return out.logits[0, -1].float().cpu()
