"""Decoded tokens through every decoder layer in one compiled call (`decode_step` in
compiled_kernels.c): one token, a block of drafted ones verified at once, or one token each of
several sequences (concurrent requests), each row computed exactly as it would be alone.

On a CPU a decode step is the weights read plus the per-operation cost of everything between
the matmuls (norms, rotation, residuals, cache writes, attention): the torch path spends ~65
operations a layer there, a few microseconds each, a quarter to a third of a full-size step. The
compiled step does the same arithmetic, rounding to bf16 where the torch path rounds, on the
same int8 weights and bf16 cache, with the kernels the self-test chose (compiled decode matmul,
float32 or int8 x int8, and compiled attention); where those were not chosen, or the model is
not int8, the torch path runs.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import torch

from agent.engine.kernels.compiled import load_library

if TYPE_CHECKING:
    from agent.engine.kv_cache import KVCache
    from agent.engine.weights import Qwen3Weights

_NORMS = ("input_norm", "qk_norm", "post_norm")
_MATMULS = ("qkv", "o", "gate_up", "down")


class _DecodeLayer(ctypes.Structure):
    _fields_ = [
        *[(name, ctypes.c_void_p) for name in _NORMS + _MATMULS],
        *[(f"{name}_scale", ctypes.c_void_p) for name in _MATMULS],
    ]


class _DecodeShape(ctypes.Structure):
    _fields_ = [
        *[
            (name, ctypes.c_int64)
            for name in ("layers", "hidden", "heads", "kv_heads", "dim", "intermediate")
        ],
        ("eps", ctypes.c_float),
    ]


class _DecodeSequence(ctypes.Structure):
    _fields_ = [
        *[(name, ctypes.c_void_p) for name in ("keys", "values", "cos", "sin")],
        *[(name, ctypes.c_int64) for name in ("capacity", "position", "rows")],
    ]


class FusedDecoder:
    """Runs decode steps of a loaded int8 model with `decode_step`; holds what it points at."""

    def __init__(self, weights: Qwen3Weights, qk_norms: list[torch.Tensor], path: int = 0) -> None:
        """`path`: the matmuls' arithmetic, float32 (0) or an int8 x int8 path's number
        (choice.fused_step_path)."""
        library = load_library()
        if library is None:
            raise RuntimeError("the fused decode step needs the compiled kernels")
        self._step = library.decode_step
        self._path = path
        self._keep: list[torch.Tensor] = []  # every tensor the structs point into
        layers = (_DecodeLayer * len(weights.layers))()
        for layer, source, qk_norm in zip(layers, weights.layers, qk_norms, strict=True):
            norms = {
                "input_norm": source.input_norm,
                "qk_norm": qk_norm,
                "post_norm": source.post_norm,
            }
            for name, tensor in norms.items():
                setattr(layer, name, self._pointer(tensor, torch.bfloat16))
            for name in _MATMULS:
                linear = getattr(source, name)
                setattr(layer, name, self._pointer(linear.weight, torch.int8))
                setattr(layer, f"{name}_scale", self._pointer(linear.scale, torch.bfloat16))
        self._layers = layers
        shape = weights.shape
        intermediate = weights.layers[0].gate_up.weight.shape[0] // 2
        self._shape = _DecodeShape(
            shape.layers,
            shape.hidden,
            shape.heads,
            shape.kv_heads,
            shape.head_dim,
            intermediate,
            shape.rms_eps,
        )

    @staticmethod
    def supports(weights: Qwen3Weights) -> bool:
        """Whether `weights` are what the compiled step reads: int8 matmuls, bf16 scales."""
        return all(
            linear.scale is not None
            and linear.weight.dtype == torch.int8
            and linear.scale.dtype == torch.bfloat16
            for layer in weights.layers
            for linear in (layer.qkv, layer.o, layer.gate_up, layer.down)
        )

    def _pointer(self, tensor: torch.Tensor | None, dtype: torch.dtype) -> int:
        if tensor is None or tensor.dtype != dtype:
            raise ValueError(f"the fused decode step reads {dtype} tensors")
        tensor = tensor.contiguous()
        self._keep.append(tensor)
        return tensor.data_ptr()

    def __call__(
        self,
        hidden: torch.Tensor,
        blocks: list[tuple[KVCache, int]],
        cos: torch.Tensor,
        sin: torch.Tensor,
    ) -> torch.Tensor:
        """The bf16 hidden states [rows, hidden] after every layer of the tokens whose
        embeddings are `hidden`: for each (cache, count) of `blocks` in turn, `count` tokens
        after the cache's positions, their keys and values written into it from its length on
        (which must have room); `cos` and `sin` [rows, head_dim] are their rotations."""
        rows = sum(count for _, count in blocks)
        if hidden.shape[0] != rows or cos.shape[0] != rows or sin.shape[0] != rows:
            raise ValueError("the fused decode step takes one embedding, cos and sin a row")
        hidden = hidden.to(torch.bfloat16).contiguous().clone()
        cos, sin = cos.to(torch.bfloat16).contiguous(), sin.to(torch.bfloat16).contiguous()
        sequences = (_DecodeSequence * len(blocks))()
        first = 0
        for sequence, (cache, count) in zip(sequences, blocks, strict=True):
            keys, values = cache.keys, cache.values
            if keys.dtype != torch.bfloat16 or not (
                keys.is_contiguous() and values.is_contiguous()
            ):
                raise ValueError("the fused decode step writes a contiguous bf16 cache")
            if cache.length + count > cache.capacity:
                raise ValueError("the cache has no room for the decoded positions")
            sequence.keys, sequence.values = keys.data_ptr(), values.data_ptr()
            sequence.cos, sequence.sin = cos[first].data_ptr(), sin[first].data_ptr()
            sequence.capacity, sequence.position, sequence.rows = (
                cache.capacity,
                cache.length,
                count,
            )
            first += count
        status = self._step(
            self._layers,
            ctypes.byref(self._shape),
            hidden.data_ptr(),
            sequences,
            len(blocks),
            self._path,
            torch.get_num_threads(),
        )
        if status != 0:
            raise MemoryError("the fused decode step could not allocate its scratch memory")
        return hidden
