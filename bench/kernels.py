"""The measurements behind the native engine's kernels: matmul kernels for one decode step's
weights, attention over a bf16 or a float32 cache, and the whole engine on every kernel choice
of agent/engine/kernels/choice.py (full-size architecture, random weights): prefill and decode
rates, and its logits against transformers + GPTQModel's on the same prompt; where a decoded
token runs as one compiled call (agent/engine/fused_decode.py), also the same kernels called
one by one from torch.

`python -m bench.kernels --out bench/kernels.json`. Weights rotate through 40 matrices of
Qwen3-0.6B's gate/up shape (6144 x 1024, ~250 MB in int8), far more than the CPU caches hold,
so rates are what a decode step gets from memory.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from agent.engine.kernels.choice import best_seconds

if TYPE_CHECKING:
    from agent.engine.model import CpuQwen3

OUT_FEATURES, IN_FEATURES, MATRICES = 6144, 1024, 40
REPEATS = 5  # timed calls per kernel, the fastest kept


def matmul_rates() -> dict[str, float]:
    """GB of weights read per second by each int8 (or bf16) kernel at batch 1."""
    weights = [
        torch.randint(-128, 127, (OUT_FEATURES, IN_FEATURES), dtype=torch.int8)
        for _ in range(MATRICES)
    ]
    scales = torch.rand(OUT_FEATURES).to(torch.bfloat16)
    x = torch.randn(1, IN_FEATURES, dtype=torch.bfloat16)
    int8_bytes = MATRICES * OUT_FEATURES * IN_FEATURES
    rates = {
        "int8pack_mm (weight-only int8, bf16 activations; decode's kernel)": int8_bytes
        / best_seconds(
            lambda: [torch.ops.aten._weight_int8pack_mm(x, w, scales) for w in weights], REPEATS
        )
    }
    packed = [torch.ops.onednn.qlinear_prepack(w, [1, IN_FEATURES]) for w in weights]
    activations = torch.randint(0, 255, (1, IN_FEATURES), dtype=torch.uint8)
    zero_points = torch.zeros(OUT_FEATURES, dtype=torch.int64)
    channel_scales = torch.rand(OUT_FEATURES)

    def onednn() -> None:
        for p in packed:
            torch.ops.onednn.qlinear_pointwise(
                activations, 0.01, 128, p, channel_scales, zero_points, None, 1.0, 0,
                torch.float32, "none", [], "",
            )  # fmt: skip

    rates["onednn qlinear (int8 weights and per-tensor int8 activations)"] = (
        int8_bytes / best_seconds(onednn, REPEATS)
    )
    bf16 = [w.to(torch.bfloat16) for w in weights[: MATRICES // 2]]
    bf16_bytes = 2 * len(bf16) * OUT_FEATURES * IN_FEATURES
    rates["bf16 linear (2 bytes a weight)"] = bf16_bytes / best_seconds(
        lambda: [F.linear(x, w) for w in bf16], REPEATS
    )
    return {name: rate / 1e9 for name, rate in rates.items()}


def _attend_28_layers(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
    for _ in range(28):
        F.scaled_dot_product_attention(query, keys, values, enable_gqa=True)


def attention_ms(context: int = 1024) -> dict[str, float]:
    """One layer's decode attention (16 query / 8 kv heads of 128) over `context` tokens."""
    times = {}
    for dtype in (torch.bfloat16, torch.float32):
        keys = torch.randn(1, 8, context, 128, dtype=dtype)
        values = torch.randn_like(keys)
        query = torch.randn(1, 16, 1, 128, dtype=dtype)
        seconds = best_seconds(functools.partial(_attend_28_layers, query, keys, values), REPEATS)
        times[f"{str(dtype).removeprefix('torch.')} cache, 28 layers"] = seconds * 1e3
    return times


ENGINE_PREFILL_TOKENS, ENGINE_CONTEXT, ENGINE_DECODE_STEPS = 512, 1024, 16
ENGINE_STEPPED_TOKENS = 32  # prompt tokens fed one at a time to check decode's numerics


def engine_choices() -> dict[str, object]:
    """Per kernel choice: prefill tok/s and logits against the reference on a 512-token prompt;
    per decode kernel and cache: logits against the reference after 32 tokens fed one at a
    time, and decode tok/s at 1k of context; and the choice this machine's self-test makes."""
    from agent.engine.kernels.choice import (
        CACHE_DTYPES,
        KernelChoice,
        available_attention,
        available_decode_kernels,
        available_prefill_kernels,
    )
    from agent.engine.loading import load_local_model
    from agent.engine.model import CpuQwen3
    from bench.random_checkpoint import cached_checkpoint

    model = cached_checkpoint("full")
    chosen = load_local_model(str(model), device="cpu", engine="native", disk_cache_mb=0)
    reference = load_local_model(str(model), device="cpu", engine="transformers")
    prompt = [(i * 7919) % 150_000 for i in range(ENGINE_PREFILL_TOKENS)]
    expected = reference.engine.forward(prompt, reference.engine.checkout(prompt))
    report: dict[str, object] = {"chosen_here": chosen.kernel}
    for prefill in available_prefill_kernels():
        for cache in CACHE_DTYPES:
            choice = KernelChoice(prefill=prefill, cache=cache)
            engine = CpuQwen3(chosen.engine.weights, prefix_cache_bytes=0, kernels=choice)
            started = time.perf_counter()
            logits = engine.forward(prompt, engine.new_cache(len(prompt)))
            seconds = time.perf_counter() - started
            report[choice.describe()] = {
                "prefill_tok_s": round(len(prompt) / seconds, 1),
                "max_abs_logit_diff_vs_reference": round(float((logits - expected).abs().max()), 4),
                "reference_max_abs_logit": round(float(expected.abs().max()), 4),
                "same_argmax_as_reference": int(logits.argmax()) == int(expected.argmax()),
            }
    stepped = prompt[:ENGINE_STEPPED_TOKENS]
    expected = reference.engine.forward(stepped, reference.engine.checkout(stepped))
    prefill = chosen.engine.kernels.prefill
    for decode in available_decode_kernels():
        for cache, attention in available_attention():
            choice = KernelChoice(decode, prefill, cache, attention)
            engine = CpuQwen3(chosen.engine.weights, prefix_cache_bytes=0, kernels=choice)
            name = f"decode {decode}, {cache} KV cache, {attention} attention"
            if engine.fused_decode is not None:  # and the same kernels called one by one
                fused = _decode_figures(engine, stepped, expected)
                report[f"{name}, one compiled call a token"] = fused
                engine.fused_decode = None
            report[name] = _decode_figures(engine, stepped, expected)
    return report


def _decode_figures(
    engine: CpuQwen3, stepped: list[int], expected: torch.Tensor
) -> dict[str, object]:
    """Logits against `expected` after `stepped` fed one token at a time, and decode tok/s at
    ENGINE_CONTEXT tokens of context."""
    kv = engine.new_cache(len(stepped))
    for token in stepped:  # one row at a time: every matmul on the decode kernel
        logits = engine.forward([token], kv)
    context = [(i * 31) % 150_000 for i in range(ENGINE_CONTEXT)]
    kv = engine.new_cache(ENGINE_CONTEXT + ENGINE_DECODE_STEPS)
    token = int(engine.forward(context, kv).argmax())
    started = time.perf_counter()
    for _ in range(ENGINE_DECODE_STEPS):
        token = int(engine.forward([token], kv).argmax())
    rate = ENGINE_DECODE_STEPS / (time.perf_counter() - started)
    return {
        f"decode_tok_s_at_{ENGINE_CONTEXT}": round(rate, 2),
        "max_abs_logit_diff_vs_reference": round(float((logits - expected).abs().max()), 4),
        "same_argmax_as_reference": int(logits.argmax()) == int(expected.argmax()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/kernels.json"))
    args = parser.parse_args(argv)
    report: dict[str, object] = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    report[f"engine, {torch.get_num_threads()} threads"] = engine_choices()
    for threads in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(threads)
        report[f"{threads} threads"] = {
            "matmul_gb_s": matmul_rates(),
            "decode_attention_ms_at_1k": attention_ms(),
        }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
