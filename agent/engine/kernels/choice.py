"""Which kernels the CPU engine runs on this machine, chosen by a short self-test at load.

CPUs differ in what is fast. Decode reads every weight once per token, so it stays on int8
weights (the fewest bytes), on torch's `aten._weight_int8pack_mm` or on our own kernel compiled
for this CPU (agent/engine/kernels/compiled.py), whichever reads them faster. Prefill is bound
by arithmetic, and
there a weight dequantized to float32 or bf16 tile by tile, then a plain float matmul, can beat
the int8 kernel: bf16 on CPUs with avx512_bf16 or AMX, float32 on AVX2-only ones; and our int8
x int8 kernel (int8_gemm.py: activations quantized per block of 256 inputs, integer
multiply-adds, on AVX-512 VNNI or AVX2) does more multiply-adds per instruction than either.
Attention
over a bf16 KV cache (half the bytes of float32) is fast in torch only where the CPU has bf16
instructions; ours (compiled_kernels.c) computes it in float32 from the bf16 cache. So at load
each candidate is timed on the model's own weights and shapes, checked against the exact
reference, and the fastest correct one is kept, in a small file beside the repacked weights
keyed by the machine, the torch build, the thread count and the model's shape. Every candidate
is first checked on each of the model's own matmul shapes at the row counts of every band
(CHECK_ROWS): a kernel wrong on one of them is not used, and the load log says why.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from agent.engine.kernels.compiled import compiled_attention, compiled_int8, load_library
from agent.engine.kernels.int8_gemm import PATHS, QBLOCK, int8_matmul, runnable_paths
from agent.engine.kernels.machine import machine_identity
from agent.paths import write_atomically

log = logging.getLogger("agent")

CHOICE_FORMAT = "agent-cpu-kernels-v8"  # bump when the candidates or what they compute change
# Rows (prompt tokens) the prefill kernels are timed at: a whole prefill chunk (model.py's
# PREFILL_CHUNK), what a long prompt runs at. At 128 rows int8 and dequantized float32 were
# within noise on an AVX2 machine (either won), at 512 float32 took 49 ms against int8's 83.
PREFILL_TIMED_ROWS = 512
PREFILL_ROWS = 128  # from how many rows the prefill kernel runs, unless measured
# Where the chosen kernel may start to win, also timed: down to DECODE_ROWS, where the int8 x
# int8 kernel can beat torch's int8 kernel.
SHORTER_PREFILLS = (4, 8, 16, 32, 64, 128, 256)
DECODE_ROWS = 4  # calls of fewer rows (a decoded token; a few, batched) use the decode kernel
SELF_TEST_CONTEXT = 1024  # cached positions in the timed decode attention
DEQUANT_TILE_ROWS = 512  # output rows dequantized at a time: the tile stays in the CPU's caches
TOLERANCE = 2**-6  # of the output's largest magnitude: bf16 rounding, not a wrong kernel
# Rows each candidate is checked at on every shape: the decode band (1-3), the band torch's int8
# kernel takes (4 up), and a prefill of rows that are not a multiple of anything.
CHECK_ROWS = (1, 3, 4, 15, 17)
# Output rows of each shape checked: whether a kernel is right depends on the input size and
# the row count, not on the outputs (torch's int8 kernel was right at 1 to 1,100 outputs where
# its input size was), so an lm_head's 151,936 are not all computed; 7 past a round number.
CHECK_OUTPUTS = 4096 + 7
REFERENCE_CHUNK_ROWS = 8192  # output rows of the float32 reference computed at a time
# torch 2.13's `_weight_int8pack_mm` is right only when the input size K is a multiple of 16 on
# AVX-512 and of 8 on AVX2: other sizes give garbage at one row and a segmentation fault from
# two (measured per case in a child process). So it is never handed another size, on any CPU.
INT8PACK_INPUT_MULTIPLE = 16

MatmulKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _aten_int8pack_mm(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int8pack_mm(x, weight, scale)


def int8pack(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """bf16 `x` [rows, in] @ int8 `weight` [out, in] scaled per output row: bf16 [rows, out].

    Workaround for torch's kernel (INT8PACK_INPUT_MULTIPLE): an input size that is not a
    multiple of 16 is zero-padded to the next one, `x` and a copy of `weight` at each call, which
    costs a copy of the weight; the self-test times it so, and our compiled kernel needs none.
    """
    tail = -weight.shape[1] % INT8PACK_INPUT_MULTIPLE
    if tail:
        x, weight = F.pad(x, (0, tail)), F.pad(weight, (0, tail))
    return _aten_int8pack_mm(x, weight, scale)


def _dequantized(dtype: torch.dtype) -> MatmulKernel:
    def matmul(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        rows, out = x.shape[0], weight.shape[0]
        result = torch.empty(rows, out, dtype=dtype)
        tile = torch.empty(min(DEQUANT_TILE_ROWS, out), weight.shape[1], dtype=dtype)
        scale = scale.to(dtype).unsqueeze(1)
        x = x.to(dtype)
        for start in range(0, out, DEQUANT_TILE_ROWS):
            end = min(start + DEQUANT_TILE_ROWS, out)
            part = tile[: end - start].copy_(weight[start:end]).mul_(scale[start:end])
            torch.mm(x, part.t(), out=result[:, start:end])
        return result.to(torch.bfloat16)

    return matmul


INT8_X_INT8 = {f"int8 x int8 {path}": path for path in PATHS}  # kernel name: its path
# The int8 x int8 kernels are candidates for models whose every matmul input spans at least
# this many activation blocks' inputs (Qwen3-0.6B's narrowest, 1024, spans four).
INT8_X_INT8_MIN_INPUTS = 4 * QBLOCK
PREFILL_KERNELS: dict[str, MatmulKernel] = {
    "int8": int8pack,
    "dequantized float32": _dequantized(torch.float32),
    "dequantized bf16": _dequantized(torch.bfloat16),
    **{name: functools.partial(int8_matmul, path=path) for name, path in INT8_X_INT8.items()},
}
CACHE_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
COMPILED = "int8 compiled"
DECODE_KERNELS: dict[str, MatmulKernel] = {
    "int8": int8pack,
    COMPILED: compiled_int8,
    # A few rows read each weight row once, front to back (int8_gemm.c's few-row tiles).
    **{name: PREFILL_KERNELS[name] for name in INT8_X_INT8},
}
# Every matmul kernel by name: what a KernelChoice names is looked up here.
MATMUL_KERNELS: dict[str, MatmulKernel] = {**PREFILL_KERNELS, **DECODE_KERNELS}
# Where every candidate failed its check: plain torch.mm on the dequantized weight.
FALLBACK = "dequantized float32"
# (KV cache dtype, decode attention): torch's SDPA over either, or ours over a bf16 cache.
ATTENTION_CHOICES = (("float32", "torch"), ("bf16", "torch"), ("bf16", "compiled"))


def available_decode_kernels() -> dict[str, MatmulKernel]:
    """The decode kernels this machine can run: torch's, ours where they build here, and each
    int8 x int8 path whose instructions this CPU has."""
    usable, runnable = load_library() is not None, runnable_paths()
    return {
        name: kernel
        for name, kernel in DECODE_KERNELS.items()
        if (usable or name != COMPILED)
        and (name not in INT8_X_INT8 or INT8_X_INT8[name] in runnable)
    }


def available_attention() -> list[tuple[str, str]]:
    """The (cache dtype, attention) pairs this machine can run."""
    usable = load_library() is not None
    return [choice for choice in ATTENTION_CHOICES if usable or choice[1] != "compiled"]


@dataclass(frozen=True)
class KernelChoice:
    """The decode matmul (calls of fewer than DECODE_ROWS rows), the prefill matmul (calls of
    `prefill_rows` rows or more, where it beats torch's int8 kernel, which takes the calls in
    between), the KV cache's dtype and the attention of one decoded position (`compiled`: ours,
    over a bf16 cache; prefill's then runs in float32)."""

    decode: str = "int8"
    prefill: str = "int8"
    cache: str = "float32"
    attention: str = "torch"
    prefill_rows: int = PREFILL_ROWS

    @property
    def decode_kernel(self) -> MatmulKernel:
        return MATMUL_KERNELS[self.decode]

    @property
    def prefill_kernel(self) -> MatmulKernel:
        return MATMUL_KERNELS[self.prefill]

    @property
    def cache_dtype(self) -> torch.dtype:
        return CACHE_DTYPES[self.cache]

    def describe(self) -> str:
        """How a user sees it, e.g. `decode int8, prefill int8, float32 KV cache, torch
        attention`."""
        return (
            f"decode {self.decode}, prefill {self.prefill}, {self.cache} KV cache, "
            f"{self.attention} attention"
        )


def fused_step_path(choice: KernelChoice) -> int | None:
    """The arithmetic of the compiled decode step (compiled_kernels.c's decode_step) that runs
    `choice`'s decode kernel: 0 for float32 (ours), an int8 x int8 path's number; None where
    the step does not run it (torch's kernels, or torch's attention)."""
    if choice.attention != "compiled":
        return None
    if choice.decode == COMPILED:
        return 0
    return PATHS[INT8_X_INT8[choice.decode]] if choice.decode in INT8_X_INT8 else None


def available_prefill_kernels() -> dict[str, MatmulKernel]:
    """The prefill kernels this machine can run: torch's, and each int8 x int8 path whose
    instructions this CPU has (where ours build here)."""
    runnable = runnable_paths()
    return {
        name: kernel
        for name, kernel in PREFILL_KERNELS.items()
        if name not in INT8_X_INT8 or INT8_X_INT8[name] in runnable
    }


def best_seconds(run: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls of `run`, after one untimed warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _correct(output: torch.Tensor, reference: torch.Tensor) -> bool:
    error = (output.double() - reference).abs().max()
    return bool(torch.isfinite(output).all()) and float(error) <= TOLERANCE * float(
        reference.abs().max().clamp_min(1.0)
    )


def _reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The exact product in float32 (int8 times bf16 is exact there), a chunk of outputs at a
    time: an lm_head in float64 would take gigabytes."""
    x32 = x.float()
    parts = [
        x32 @ (chunk.float() * part.float().unsqueeze(1)).t()
        for chunk, part in zip(
            weight.split(REFERENCE_CHUNK_ROWS), scale.split(REFERENCE_CHUNK_ROWS), strict=True
        )
    ]
    return torch.cat(parts, dim=1).double()


class ShapeChecks:
    """Each kernel's numerics on the model's own matmuls (one (weight, scale) per shape), at
    every row count of CHECK_ROWS, against the exact product."""

    def __init__(self, weights: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        generator = torch.Generator().manual_seed(0)
        self._cases = []
        for whole, whole_scale in weights:
            weight, scale = whole[:CHECK_OUTPUTS], whole_scale[:CHECK_OUTPUTS]
            for rows in CHECK_ROWS:
                x = torch.randn(rows, weight.shape[1], generator=generator).to(torch.bfloat16)
                where = f"{rows} rows of a [{whole.shape[0]}, {whole.shape[1]}] weight"
                self._cases.append((where, x, weight, scale, _reference(x, weight, scale)))

    def failure(self, kernel: MatmulKernel) -> str | None:
        """Why `kernel` must not be used (the first shape it gets wrong), or None."""
        for where, x, weight, scale, reference in self._cases:
            if not _correct(kernel(x, weight, scale), reference):
                return f"wrong for {where}"
        return None


def fastest_prefill(
    weight: torch.Tensor, scale: torch.Tensor, excluded: frozenset[str] = frozenset()
) -> tuple[str, int, dict[str, float]]:
    """The fastest correct prefill kernel for an int8 `weight` at PREFILL_TIMED_ROWS rows, the
    fewest rows from which it beats the int8 kernel (SHORTER_PREFILLS or PREFILL_TIMED_ROWS;
    DECODE_ROWS when the int8 kernel is `excluded`), and each timing in milliseconds."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(PREFILL_TIMED_ROWS, weight.shape[1], generator=generator).to(torch.bfloat16)
    reference = _reference(x, weight, scale)
    timings = {}
    for name, kernel in available_prefill_kernels().items():
        run = functools.partial(kernel, x, weight, scale)
        if name not in excluded and _correct(run(), reference):
            timings[name] = 1000 * best_seconds(run)
    fastest = min(timings, key=timings.__getitem__, default=FALLBACK)
    if "int8" in excluded:
        return fastest, DECODE_ROWS, timings
    rows = PREFILL_TIMED_ROWS
    for shorter in sorted(SHORTER_PREFILLS, reverse=True):
        part = x[:shorter]
        chosen = 1000 * best_seconds(
            functools.partial(PREFILL_KERNELS[fastest], part, weight, scale)
        )
        int8 = 1000 * best_seconds(functools.partial(int8pack, part, weight, scale))
        timings[f"{fastest} at {shorter} rows"], timings[f"int8 at {shorter} rows"] = chosen, int8
        if fastest == "int8" or chosen >= int8:
            break
        rows = shorter
    return fastest, rows, timings


def fastest_decode(
    weights: list[tuple[torch.Tensor, torch.Tensor]], excluded: frozenset[str] = frozenset()
) -> tuple[str, dict[str, float]]:
    """The fastest correct decode kernel over int8 `weights` (weight, scale): read in turn, more
    than the CPU's caches hold, as a decode step reads them; and each one's milliseconds."""
    x = torch.randn(1, weights[0][0].shape[1], generator=torch.Generator().manual_seed(0))
    x = x.to(torch.bfloat16)
    first, scale = weights[0]
    reference = _reference(x, first, scale)
    timings = {}
    for name, kernel in available_decode_kernels().items():
        if name not in excluded and _correct(kernel(x, first, scale), reference):
            run = functools.partial(_each, kernel, x, weights)
            timings[name] = 1000 * best_seconds(run)
    return min(timings, key=timings.__getitem__, default=FALLBACK), timings


def _each(
    kernel: MatmulKernel, x: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    for weight, scale in weights:
        kernel(x, weight, scale)


def fastest_attention(
    kv_heads: int, heads: int, head_dim: int
) -> tuple[tuple[str, str], dict[str, float]]:
    """The correct (cache dtype, attention) pair whose decode attention over SELF_TEST_CONTEXT
    positions is fastest, and each one's milliseconds."""
    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(kv_heads, SELF_TEST_CONTEXT, head_dim, generator=generator)
    values = torch.randn(kv_heads, SELF_TEST_CONTEXT, head_dim, generator=generator)
    query = torch.randn(heads, head_dim, generator=generator)
    reference = F.scaled_dot_product_attention(
        query.double()[None, :, None], keys.double()[None], values.double()[None], enable_gqa=True
    )[0, :, 0]
    timings = {}
    for cache, attention in available_attention():
        dtype = CACHE_DTYPES[cache]
        k, v = keys.to(dtype), values.to(dtype)
        if attention == "compiled":
            run = functools.partial(compiled_attention, query, k, v, SELF_TEST_CONTEXT)
        else:
            run = functools.partial(_torch_attention, query.to(dtype), k, v)
        if _correct(run(), reference):
            timings[f"{cache} cache, {attention} attention"] = 1000 * best_seconds(run)
    fastest = min(timings, key=timings.__getitem__, default="float32 cache, torch attention")
    cache, attention = fastest.removesuffix(" attention").split(" cache, ")
    return (cache, attention), timings


def _torch_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    attended = F.scaled_dot_product_attention(
        query[None, :, None], keys[None], values[None], enable_gqa=True
    )
    return attended[0, :, 0]


def failing_kernels(checked: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, str]:
    """The matmul kernels that get one of the `checked` shapes wrong here, each with why."""
    checks = ShapeChecks(checked)
    candidates = {**available_prefill_kernels(), **available_decode_kernels()}
    failures = {}
    for name, kernel in candidates.items():
        why = checks.failure(kernel)
        if why is not None:
            failures[name] = why
            log.info("kernel %s is not used on this machine: %s", name, why)
    return failures


def choose_kernels(
    weights: list[tuple[torch.Tensor, torch.Tensor]],
    attention: tuple[int, int, int],
    cache_dir: Path | None,
    checked: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> KernelChoice:
    """The kernels for a model whose int8 matmuls include `weights` ((weight, scale) pairs, the
    widest first; timed) and `checked` (one pair per shape the model runs: every kernel is
    checked on each; default the first of `weights`), and whose attention has `attention` =
    (kv_heads, heads, head_dim): measured once per machine, then read from `cache_dir` (None:
    measure every time)."""
    checked = checked or weights[:1]
    shapes = [tuple(weight.shape) for weight, _ in weights]
    checked_shapes = sorted({tuple(weight.shape) for weight, _ in checked})
    key = hashlib.sha256(
        f"{CHOICE_FORMAT}\n{machine_identity()}\n{shapes}\n{checked_shapes}\n{attention}".encode()
    ).hexdigest()[:16]
    path = None if cache_dir is None else cache_dir / f"kernels-{key}.json"
    if path is not None and path.is_file():
        try:
            kept = KernelChoice(**json.loads(path.read_text(encoding="utf-8"))["choice"])
        except (ValueError, KeyError, TypeError):
            log.debug("ignoring a damaged kernel choice in %s", path)
        else:
            usable = kept.decode in {*available_decode_kernels(), FALLBACK}
            usable = usable and kept.prefill in available_prefill_kernels()
            if usable and (kept.cache, kept.attention) in available_attention():
                return kept
    failures = failing_kernels(checked)
    excluded = frozenset(failures)
    if min(weight.shape[1] for weight, _ in checked) < INT8_X_INT8_MIN_INPUTS:
        # A row within one or two activation blocks: int8 x int8 is as coarse as per-row scales.
        excluded |= frozenset(INT8_X_INT8)
    decode, decode_ms = fastest_decode(weights, excluded)
    prefill, prefill_rows, prefill_ms = fastest_prefill(*weights[0], excluded)
    (cache, attend), attention_ms = fastest_attention(*attention)
    choice = KernelChoice(decode, prefill, cache, attend, prefill_rows)
    timings = {"decode_ms": decode_ms, "prefill_ms": prefill_ms, "attention_ms": attention_ms}
    log.info("kernels for this machine: %s (%s)", choice.describe(), timings)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"choice": asdict(choice), **timings, "failed_checks": failures}
        write_atomically(path, json.dumps(record, indent=1) + "\n")
    return choice
