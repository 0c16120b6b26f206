"""Decode's compiled int8 matmul (int8_gemv.c): built once per machine, loaded with ctypes.

torch's `_weight_int8pack_mm` reads int8 weights at about half the memory bandwidth at batch 1
on our CPUs; this kernel, compiled here with `-march=native`, reads them faster on the same
arithmetic. Building needs a C compiler (`$CC`, else `cc`); where there is none, or it fails,
the engine keeps torch's kernel and the reason is logged.
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
from collections.abc import Callable
from pathlib import Path

import torch

from agent.paths import cache_dir

log = logging.getLogger("agent")

SOURCE = Path(__file__).with_name("int8_gemv.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 120


def _compiler() -> list[str] | None:
    command = shlex.split(os.environ.get("CC", "")) or ["cc"]
    return command if shutil.which(command[0]) else None


def _build(compiler: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        subprocess.run(
            [*compiler, *FLAGS, str(SOURCE), "-o", str(scratch)],
            check=True,
            capture_output=True,
            timeout=BUILD_TIMEOUT_S,
        )
        os.replace(scratch, target)  # never a half-written library for another process
    finally:
        scratch.unlink(missing_ok=True)


@functools.cache
def load_int8_gemv() -> Callable[..., int] | None:
    """The compiled kernel's function, or None (logged) where it cannot be built here."""
    from agent.backends.cpu_kernels import machine_identity

    compiler = _compiler()
    if compiler is None:
        log.info("no C compiler (set CC): decode keeps torch's int8 kernel")
        return None
    key = hashlib.sha256(
        f"{SOURCE.read_text()}\n{compiler}\n{FLAGS}\n{machine_identity()}".encode()
    ).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"int8_gemv-{key}.so"
    try:
        if not target.is_file():
            _build(compiler, target)
        function = ctypes.CDLL(str(target)).int8_gemv
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = detail.decode(errors="replace").strip().splitlines()[:1] or [str(exc)]
        log.info("cannot build the int8 decode kernel (%s): torch's is used", reason[0])
        return None
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
    return function


def compiled_int8(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """bf16 `x` [rows, in] @ int8 `weight` [out, in] scaled per output row: bf16 [rows, out],
    on the compiled kernel (which must have loaded: see `load_int8_gemv`)."""
    function = load_int8_gemv()
    assert function is not None, "compiled_int8 called where the kernel did not build"
    if weight.dtype != torch.int8 or scale.dtype != torch.bfloat16 or not weight.is_contiguous():
        raise ValueError("the int8 decode kernel takes a contiguous int8 weight, bf16 scales")
    x, scale = x.to(torch.bfloat16).contiguous(), scale.contiguous()
    rows, out = x.shape[0], weight.shape[0]
    y = torch.empty(rows, out, dtype=torch.bfloat16)
    status = function(
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
