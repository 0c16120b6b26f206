"""Prefill's int8 x int8 matmul (int8_gemm.c): the activations quantized to int8 at run time,
a scale for each block of QBLOCK inputs of a row, the products summed in int32 by the CPU's
integer multiply-add instructions and the blocks' sums in float.

Widening every int8 weight to float for each block of rows (the dequantized kernels) runs at
the float multiply-add rate; vpdpbusd (AVX-512 VNNI) does four times as many multiply-adds per
instruction as a float32 FMA. Each path is a kernel of its own in the registry (choice.py),
offered where this CPU has its instructions, checked and timed like the others; both compute
the same integers, so they give the same output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agent.engine.kernels.compiled import library, load_library

PATHS = {"avx2": 1, "avx512 vnni": 2}  # int8_gemm.c's PATH_AVX2, PATH_VNNI
TILE_OUT = 4  # the fewest output rows int8_gemm.c takes; fewer are padded to it
QBLOCK = 256  # inputs per activation scale (int8_gemm.c's QBLOCK)


def runnable_paths() -> tuple[str, ...]:
    """The paths this CPU has the instructions for, where the compiled kernels build."""
    if load_library() is None:
        return ()
    mask = library().int8_gemm_paths()
    return tuple(name for name, bit in PATHS.items() if mask & bit)


def int8_matmul(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, path: str
) -> torch.Tensor:
    """bf16 `x` [rows, in] @ int8 `weight` [out, in] scaled per output row: bf16 [rows, out],
    each block of QBLOCK inputs of a row of `x` quantized to int8 (scale max|x in it| / 127),
    on instruction path `path`."""
    if weight.dtype != torch.int8 or scale.dtype != torch.bfloat16 or not weight.is_contiguous():
        raise ValueError("the int8 x int8 kernel takes a contiguous int8 weight, bf16 scales")
    out = weight.shape[0]
    if out < TILE_OUT:
        weight, scale = F.pad(weight, (0, 0, 0, TILE_OUT - out)), F.pad(scale, (0, TILE_OUT - out))
    x, scale = x.to(torch.bfloat16).contiguous(), scale.contiguous()
    y = torch.empty(x.shape[0], weight.shape[0], dtype=torch.bfloat16)
    status = library().int8_gemm(
        weight.data_ptr(),
        scale.data_ptr(),
        x.data_ptr(),
        y.data_ptr(),
        x.shape[0],
        weight.shape[0],
        weight.shape[1],
        PATHS[path],
        torch.get_num_threads(),
    )
    if status == -1:
        raise MemoryError("the int8 x int8 kernel could not allocate its quantized input")
    if status != 0:
        raise RuntimeError(f"the int8 x int8 kernel's {path} path does not run on this CPU")
    return y[:, :out]
