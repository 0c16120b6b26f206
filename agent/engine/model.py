"""A Qwen3 decoder for CPUs: int8 weights, our own KV cache, prefix reuse.

The forward pass is Qwen3ForCausalLM's, written as few tensor operations as it takes, because
on a CPU decode time is weight bytes read plus per-operation overhead: fused q/k/v and gate/up
matmuls over `aten._weight_int8pack_mm`, the lm_head in int8 too, a preallocated cache, and
RMSNorm and RoPE computed exactly as transformers computes them (float32 norm, bf16 rotation).
Prefill's matmul kernel and the cache's dtype are the ones measured fastest on this machine
(agent/engine/kernels/choice.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from agent.engine.fused_decode import FusedDecoder
from agent.engine.kernels.choice import DECODE_ROWS, KernelChoice, choose_kernels, fused_step_path
from agent.engine.kernels.compiled import compiled_attention
from agent.engine.kv_cache import GROWTH_TOKENS, KVCache, PrefixCache
from agent.engine.prefix_store import PrefixStore
from agent.engine.weights import LayerWeights, Linear, Qwen3Weights, load_qwen3_weights

PREFILL_CHUNK = 512  # prompt tokens per forward: bounds the attention mask and activations
DTYPE = torch.bfloat16
# What keys and values on disk depend on besides the weights: change it with the numerics.
KV_FORMAT = "agent-qwen3-kv-v1 bf16 rope-bf16"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3RMSNorm: normalised in float32, scaled in the model's dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _one_per_shape(weights: Qwen3Weights) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One int8 matmul (weight, scale) of each shape the model runs: what every kernel is
    checked on before it is chosen."""
    shapes: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
    for linear in (*weights.linears[:4], weights.lm_head):  # the first layer's, the lm_head
        if linear.scale is not None:
            shapes.setdefault(tuple(linear.weight.shape), (linear.weight, linear.scale))
    return list(shapes.values())


class CpuQwen3:
    """Runs a loaded Qwen3 checkpoint token by token, reusing cached prompt prefixes."""

    def __init__(
        self,
        weights: Qwen3Weights,
        prefix_cache_bytes: int,
        prefix_store: PrefixStore | None = None,
        kernels: KernelChoice | None = None,
    ) -> None:
        self.weights = weights
        self.kernels = kernels or KernelChoice()
        # Per layer: q_norm for every query head, then k_norm for every kv head.
        self._qk_norms = [
            torch.cat(
                (
                    layer.q_norm.expand(weights.shape.heads, -1),
                    layer.k_norm.expand(weights.shape.kv_heads, -1),
                )
            )
            for layer in weights.layers
        ]
        # A decoded token's layers in one compiled call, where its kernels are the chosen ones.
        path = fused_step_path(self.kernels)
        self.fused_decode = (
            FusedDecoder(weights, self._qk_norms, path)
            if path is not None and FusedDecoder.supports(weights)
            else None
        )
        self.shape = weights.shape
        self.vocab_size = weights.shape.vocab
        self.prefix_cache: PrefixCache[KVCache] = PrefixCache(prefix_cache_bytes)
        self.prefix_store = prefix_store
        dim = self.shape.head_dim
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        self._inv_freq = 1.0 / (self.shape.rope_theta**exponents)
        self._cos = torch.empty(0, dim, dtype=DTYPE)
        self._sin = torch.empty(0, dim, dtype=DTYPE)

    @classmethod
    def load(
        cls,
        path: Path,
        prefix_cache_bytes: int,
        int8_lm_head: bool = True,
        repack_dir: Path | None = None,
        prefix_store: PrefixStore | None = None,
        kernels: KernelChoice | None = None,
    ) -> CpuQwen3:
        """Read the checkpoint in `path` (GPTQ or unquantized); see `load_qwen3_weights`.

        Without `kernels`, a quantized model's are measured on this machine (once: the choice
        is kept in `repack_dir`), an unquantized one's are the defaults.
        """
        weights = load_qwen3_weights(path, int8_lm_head, repack_dir)
        if kernels is None and weights.layers[0].gate_up.scale is not None:
            shape = weights.shape
            attention = (shape.kv_heads, shape.heads, shape.head_dim)
            # The widest matmul first (prefill is timed on it), then all of one kind in turn.
            gate_ups = [
                (layer.gate_up.weight, layer.gate_up.scale)
                for layer in weights.layers
                if layer.gate_up.scale is not None
            ]
            kernels = choose_kernels(gate_ups, attention, repack_dir, _one_per_shape(weights))
        return cls(weights, prefix_cache_bytes, prefix_store, kernels)

    def new_cache(self, room: int) -> KVCache:
        """An empty cache with room for `room` positions."""
        shape = self.shape
        dtype = self.kernels.cache_dtype
        return KVCache(shape.layers, shape.kv_heads, shape.head_dim, room, dtype)

    def checkout(self, prompt: list[int], stable: int = 0) -> KVCache:
        """A cache for `prompt`, already holding the longest prefix any earlier call computed.

        `stable` leading tokens (the system prompt and tools) are also looked up in the
        prefix store, where an earlier process may have left them, and kept there after.
        """
        room = len(prompt) + GROWTH_TOKENS
        stable = min(stable, len(prompt) - 1)
        store = self.prefix_store
        if store is None or stable <= self.prefix_cache.longest_prefix(prompt):
            return self.prefix_cache.checkout(prompt, lambda: self.new_cache(room))
        stored = self._stored_cache(store, prompt[:stable], room)
        if stored is not None:
            return stored
        cache = self.prefix_cache.checkout(prompt, lambda: self.new_cache(room))
        cache.unsaved_prefix = stable
        return cache

    def _stored_cache(self, store: PrefixStore, prefix: list[int], room: int) -> KVCache | None:
        stored = store.load(prefix)
        shape = self.shape
        expected = (shape.layers, shape.kv_heads, len(prefix), shape.head_dim)
        if stored is None or {stored.keys.shape, stored.values.shape} != {expected}:
            return None
        cache = self.new_cache(room)  # allocated only on a hit: a miss allocates in checkout
        cache.keys[:, :, : len(prefix)] = stored.keys
        cache.values[:, :, : len(prefix)] = stored.values
        cache.tokens = list(prefix)
        return cache

    def checkin(self, cache: KVCache) -> None:
        """Give the cache back so later calls (and, for its stable prefix, later processes)
        can reuse its prefix."""
        saved, cache.unsaved_prefix = cache.unsaved_prefix, 0
        if self.prefix_store is not None and 0 < saved <= cache.length:
            # Lossless in bf16: keys and values are computed in bf16 (DTYPE).
            self.prefix_store.save(
                cache.tokens[:saved],
                cache.keys[:, :, :saved].to(DTYPE),
                cache.values[:, :, :saved].to(DTYPE),
            )
        self.prefix_cache.checkin(cache)

    def forward(self, tokens: list[int], cache: KVCache) -> torch.Tensor:
        """Feed `tokens` after what `cache` holds; the float32 logits after the last one."""
        cache.reserve(cache.length + len(tokens))
        with torch.inference_mode():
            for start in range(0, len(tokens), PREFILL_CHUNK):
                hidden = self._run(tokens[start : start + PREFILL_CHUNK], cache)
            last = rms_norm(hidden[-1:], self.weights.norm, self.shape.rms_eps)
            return self._matmul(self.weights.lm_head, last)[0].float()

    @property
    def verifies_drafts(self) -> bool:
        """Whether `verify` runs here: a block of tokens through the compiled decode step,
        each row's logits exactly those of decoding its token alone."""
        return self.fused_decode is not None

    def verify(self, tokens: list[int], cache: KVCache) -> torch.Tensor:
        """Feed `tokens` (a decoded token, then drafted ones) after what `cache` holds in one
        pass: the float32 logits after each of them [len(tokens), vocab], bit for bit what
        `forward` gives feeding them one at a time. Only where `verifies_drafts`."""
        return self.verify_blocks([(tokens, cache)])[0]

    def verify_blocks(self, blocks: list[tuple[list[int], KVCache]]) -> list[torch.Tensor]:
        """`verify` for several sequences at once, in one pass of the fused decode step (the
        weights read once for all of their rows): each (tokens, cache)'s logits, bit for bit
        what it gets verified alone. Only where `verifies_drafts`."""
        if self.fused_decode is None:
            raise ValueError("verify runs on the fused decode step, not chosen here")
        for tokens, cache in blocks:
            cache.reserve(cache.length + len(tokens))
        with torch.inference_mode():
            ropes = [self._rope(cache.length, len(tokens)) for tokens, cache in blocks]
            cos = torch.cat([cos for cos, _ in ropes])[:, 0]
            sin = torch.cat([sin for _, sin in ropes])[:, 0]
            hidden = self.weights.embed[torch.tensor([t for tokens, _ in blocks for t in tokens])]
            rows = [(cache, len(tokens)) for tokens, cache in blocks]
            hidden = self.fused_decode(hidden, rows, cos, sin)
            for tokens, cache in blocks:
                cache.tokens.extend(tokens)
            logits = self._logits_of_rows(hidden)
            return list(logits.split([len(tokens) for tokens, _ in blocks]))

    def _logits_of_rows(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [rows, vocab] of final hidden states, each row's what it is alone."""
        rows = rms_norm(hidden, self.weights.norm, self.shape.rms_eps)
        lm_head = self.weights.lm_head
        if lm_head.scale is None:  # a bf16 matmul's rounding depends on its row count
            return torch.cat([lm_head(row) for row in rows.split(1)]).float()
        # The decode kernel computes each row alone, as for one row.
        return self.kernels.decode_kernel(rows, lm_head.weight, lm_head.scale).float()

    def forward_batch(self, tokens: list[int], caches: list[KVCache]) -> torch.Tensor:
        """One next token for each of several sequences, in one pass: the weights are read
        once for all of them (decode on a CPU is bound by reading them). Logits [len, vocab];
        on the fused decode step, each row bit for bit what the sequence gets alone."""
        if self.fused_decode is not None:
            blocks = [([token], cache) for token, cache in zip(tokens, caches, strict=True)]
            return torch.cat(self.verify_blocks(blocks))
        for cache in caches:
            cache.reserve(cache.length + 1)
        starts = [cache.length for cache in caches]
        with torch.inference_mode():
            ropes = [self._rope(start, 1) for start in starts]
            cos = torch.cat([c for c, _ in ropes])  # [batch, 1, head_dim]
            sin = torch.cat([s for _, s in ropes])
            hidden = self.weights.embed[torch.tensor(tokens)]
            for index, layer in enumerate(self.weights.layers):
                hidden = self._batch_layer(hidden, layer, caches, index, (starts, cos, sin))
            for cache, token in zip(caches, tokens, strict=True):
                cache.tokens.append(token)
            last = rms_norm(hidden, self.weights.norm, self.shape.rms_eps)
            return self._matmul(self.weights.lm_head, last).float()

    def _batch_layer(
        self,
        hidden: torch.Tensor,
        layer: LayerWeights,
        caches: list[KVCache],
        index: int,
        position: tuple[list[int], torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        eps = self.shape.rms_eps
        starts, cos, sin = position
        qkv = self._matmul(layer.qkv, rms_norm(hidden, layer.input_norm, eps))
        q, k, v = self._heads(qkv, index, cos, sin)
        rows = []
        for row, (cache, start) in enumerate(zip(caches, starts, strict=True)):
            cache.keys[index, :, start] = k[row]
            cache.values[index, :, start] = v[row]
            rows.append(self._attend(q[row : row + 1], cache, index, start + 1, None))
        attended = torch.cat(rows)
        hidden = hidden + self._matmul(layer.o, attended)
        gate, up = self._matmul(layer.gate_up, rms_norm(hidden, layer.post_norm, eps)).chunk(
            2, dim=-1
        )
        return hidden + self._matmul(layer.down, F.silu(gate) * up)

    def _attend(
        self,
        q: torch.Tensor,
        cache: KVCache,
        index: int,
        end: int,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attention of `q` [rows, heads, head_dim] over layer `index`'s first `end` cached
        positions (causal among the rows, or by `mask`): [rows, heads * head_dim] in DTYPE."""
        keys, values = cache.keys[index], cache.values[index]
        rows = q.shape[0]
        compiled = self.kernels.attention == "compiled"
        if compiled and rows == 1:
            return compiled_attention(q[0], keys, values, end).view(1, -1).to(DTYPE)
        # Prefill next to compiled decode attention (a bf16 cache): in float32, which torch
        # computes fast on every CPU.
        dtype = torch.float32 if compiled else keys.dtype
        attended = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0).to(dtype),
            keys[:, :end].unsqueeze(0).to(dtype),
            values[:, :end].unsqueeze(0).to(dtype),
            attn_mask=mask,
            is_causal=mask is None and rows > 1,
            enable_gqa=True,
        )
        return attended[0].transpose(0, 1).reshape(rows, -1).to(DTYPE)

    def _heads(
        self, qkv: torch.Tensor, index: int, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k and v [rows, heads, head_dim] of a layer's fused projection, q and k normed and
        rotated together (their heads side by side: half the operations, the same values)."""
        shape = self.shape
        rows, heads = qkv.shape[0], shape.heads + shape.kv_heads
        qk = qkv[:, : heads * shape.head_dim].view(rows, heads, shape.head_dim)
        qk = _rotate(rms_norm(qk, self._qk_norms[index], shape.rms_eps), cos, sin)
        q, k = qk.split((shape.heads, shape.kv_heads), dim=1)
        v = qkv[:, heads * shape.head_dim :].view(rows, shape.kv_heads, shape.head_dim)
        return q, k, v

    def _matmul(self, linear: Linear, x: torch.Tensor) -> torch.Tensor:
        """`linear(x)` on this machine's kernels: decode's for a few rows, prefill's from its
        measured number of rows, torch's int8 kernel in between."""
        rows = x.shape[0]
        if linear.scale is None:
            return linear(x)
        if rows < DECODE_ROWS:
            return self.kernels.decode_kernel(x, linear.weight, linear.scale)
        if rows >= self.kernels.prefill_rows:
            return self.kernels.prefill_kernel(x, linear.weight, linear.scale)
        return linear(x)

    def _rope(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + count
        if end > self._cos.shape[0]:
            size = max(end, 2 * self._cos.shape[0], 4096)
            freqs = torch.arange(size, dtype=torch.float32)[:, None] * self._inv_freq[None, :]
            angles = torch.cat((freqs, freqs), dim=-1)
            self._cos, self._sin = angles.cos().to(DTYPE), angles.sin().to(DTYPE)
        return self._cos[start:end].unsqueeze(1), self._sin[start:end].unsqueeze(1)

    def _run(self, tokens: list[int], cache: KVCache) -> torch.Tensor:
        start, count = cache.length, len(tokens)
        hidden = self.weights.embed[torch.tensor(tokens)]
        cos, sin = self._rope(start, count)
        if count == 1 and self.fused_decode is not None:
            hidden = self.fused_decode(hidden, [(cache, 1)], cos[:, 0], sin[:, 0])
            cache.tokens.extend(tokens)
            return hidden
        mask = None
        if count > 1 and start > 0:
            keys = torch.arange(start + count)
            mask = keys[None, :] <= (start + torch.arange(count))[:, None]
        for index, layer in enumerate(self.weights.layers):
            hidden = self._layer(hidden, layer, cache, index, (start, cos, sin, mask))
        cache.tokens.extend(tokens)
        return hidden

    def _layer(
        self,
        hidden: torch.Tensor,
        layer: LayerWeights,
        cache: KVCache,
        index: int,
        position: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None],
    ) -> torch.Tensor:
        eps = self.shape.rms_eps
        start, cos, sin, mask = position
        count = hidden.shape[0]
        end = start + count
        qkv = self._matmul(layer.qkv, rms_norm(hidden, layer.input_norm, eps))
        q, k, v = self._heads(qkv, index, cos, sin)
        cache.keys[index, :, start:end] = k.transpose(0, 1)
        cache.values[index, :, start:end] = v.transpose(0, 1)
        attended = self._attend(q, cache, index, end, mask)
        hidden = hidden + self._matmul(layer.o, attended)
        gate, up = self._matmul(layer.gate_up, rms_norm(hidden, layer.post_norm, eps)).chunk(
            2, dim=-1
        )
        return hidden + self._matmul(layer.down, F.silu(gate) * up)
