"""Our compiled kernels (compiled_kernels.c for decode, int8_gemm.c for prefill's int8 x int8
matmul, see int8_gemm.py): built once per machine into one library, loaded with ctypes.

torch's `_weight_int8pack_mm` reads int8 weights at about half the memory bandwidth at batch 1
on our CPUs, and its attention over a bf16 cache is slow where the CPU has no bf16
instructions; these kernels, compiled here with `-march=native`, do the same arithmetic faster:
an int8 matmul, and one query's attention over a bf16 cache in float32. Building needs a C
compiler (`$CC`, else `cc`); where there is none, or it fails, the engine keeps torch's kernels
and the reason is logged.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import torch

from agent.engine.kernels.machine import machine_identity
from agent.paths import cache_dir

log = logging.getLogger("agent")

# Decode's kernels, and prefill's int8 x int8 matmul (int8_gemm.py): one library.
SOURCES = tuple(Path(__file__).with_name(name) for name in ("compiled_kernels.c", "int8_gemm.c"))
HEADERS = (Path(__file__).with_name("bf16.h"),)  # included by the sources: in the key too
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
LIBRARIES = ("-lm",)
BUILD_TIMEOUT_S = 120


def _compiler() -> list[str] | None:
    command = shlex.split(os.environ.get("CC", "")) or ["cc"]
    return command if shutil.which(command[0]) else None


def _build(compiler: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        subprocess.run(
            [*compiler, *FLAGS, *map(str, SOURCES), "-o", str(scratch), *LIBRARIES],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT_S,
        )
        os.replace(scratch, target)  # never a half-written library for another process
    finally:
        scratch.unlink(missing_ok=True)


@functools.cache
def load_library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (logged) where they cannot be built here."""
    compiler = _compiler()
    if compiler is None:
        log.info("no C compiler (set CC): decode keeps torch's kernels")
        return None
    sources = "\n".join(source.read_text() for source in (*SOURCES, *HEADERS))
    key = hashlib.sha256(
        f"{sources}\n{compiler}\n{FLAGS}\n{machine_identity()}".encode()
    ).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"compiled_kernels-{key}.so"
    try:
        if not target.is_file():
            _build(compiler, target)
        library = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = detail.decode(errors="replace").strip().splitlines()[:1] or [str(exc)]
        log.info("cannot build the compiled decode kernels (%s): torch's are used", reason[0])
        return None
    library.int8_gemv.restype = ctypes.c_int
    library.int8_gemv.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    library.attend_one.restype = ctypes.c_int
    library.attend_one.argtypes = (
        [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_float, ctypes.c_int]
    )
    library.decode_step.restype = ctypes.c_int
    library.decode_step.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] + [ctypes.c_int] * 2
    library.int8_gemm_paths.restype = ctypes.c_int
    library.int8_gemm_paths.argtypes = []
    library.int8_gemm.restype = ctypes.c_int
    library.int8_gemm.argtypes = (
        [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_int]
    )
    library.int8_peak.restype = ctypes.c_int64
    library.int8_peak.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int]
    return library


def library() -> ctypes.CDLL:
    """The compiled kernels, which the caller knows were built here."""
    built = load_library()
    if built is None:
        raise RuntimeError("a compiled kernel was asked for where they did not build")
    return built


def compiled_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """bf16 `x` [rows, in] @ int8 `weight` [out, in] scaled per output row: bf16 [rows, out]."""
    if weight.dtype != torch.int8 or scale.dtype != torch.bfloat16 or not weight.is_contiguous():
        raise ValueError("the int8 decode kernel takes a contiguous int8 weight, bf16 scales")
    x, scale = x.to(torch.bfloat16).contiguous(), scale.contiguous()
    rows, out = x.shape[0], weight.shape[0]
    y = torch.empty(rows, out, dtype=torch.bfloat16)
    status = library().int8_gemv(
        weight.data_ptr(),
        scale.data_ptr(),
        x.data_ptr(),
        y.data_ptr(),
        rows,
        out,
        weight.shape[1],
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("the int8 decode kernel could not allocate its input copy")
    return y


def compiled_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, length: int
) -> torch.Tensor:
    """One position's attention: `query` [heads, dim] (any float dtype) over the first `length`
    positions of one layer's bf16 `keys` and `values` [kv_heads, capacity, dim], kv head i
    serving query heads i * group ... (i + 1) * group - 1; float32 [heads, dim]."""
    kv_heads, capacity, dim = keys.shape
    heads = query.shape[0]
    if (
        keys.dtype != torch.bfloat16
        or values.shape != keys.shape
        or values.dtype != keys.dtype
        or not (keys.is_contiguous() and values.is_contiguous())
        or heads % kv_heads
        or query.shape[1] != dim
        or not 0 < length <= capacity
    ):
        raise ValueError("compiled_attention: mismatched query, keys or values")
    query = query.float().contiguous()
    out = torch.empty(heads, dim)
    status = library().attend_one(
        query.data_ptr(),
        keys.data_ptr(),
        values.data_ptr(),
        out.data_ptr(),
        kv_heads,
        heads // kv_heads,
        capacity,
        length,
        dim,
        dim**-0.5,
        torch.get_num_threads(),
    )
    if status != 0:
        raise MemoryError("the attention kernel could not allocate its scores")
    return out
