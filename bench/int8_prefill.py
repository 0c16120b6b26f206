"""Prefill on the int8 x int8 kernel against the prefill kernels before it, and against the
machine's int8 multiply-add peak, in one run.

`python -m bench.int8_prefill --out bench/int8_prefill.json`. On Qwen3-0.6B's full-size
architecture with random weights (bench/random_checkpoint.py): the rate of the int8 multiply-add
instruction each int8 x int8 path uses (vpdpbusd, vpmaddwd), in registers, on one thread and on
every core; the prefill kernel the self-test picks without the int8 x int8 kernels ("before")
and with them ("now"), and the widest matmul (gate/up) alone on each; then, round after round,
on each, a 1k-token prefill and an agent's second step (its first token after the first step
ran, and the same prompt from an empty cache), and each one's logits after the 1k tokens
against transformers + GPTQModel's. The matmul rate of a prefill counts every layer's
multiply-adds (not the lm_head's, run for one row).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from agent.engine.kernels.choice import (
    INT8_X_INT8,
    MATMUL_KERNELS,
    KernelChoice,
    best_seconds,
    fastest_prefill,
)
from agent.engine.kernels.compiled import library
from agent.engine.kernels.int8_gemm import PATHS, runnable_paths
from agent.engine.loading import load_local_model
from agent.engine.model import CpuQwen3
from agent.engine.weights import Qwen3Weights
from bench.random_checkpoint import cached_checkpoint
from bench.speed import VOCAB_TEXT_IDS, agent_prompts

PREFILL_TOKENS = 1024
PEAK_ITERATIONS = 2_000_000  # rounds of the peak loop: about a second on one core
PREFIX_CACHE_BYTES = 1 << 30


def int8_peak_gmac_s(path: str, threads: int) -> float:
    """Multiply-adds per second (all threads together) of `path`'s instruction, in registers."""
    peak = library().int8_peak
    peak(PATHS[path], PEAK_ITERATIONS // 10, threads)  # warm up, clocks up
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        per_round = peak(PATHS[path], PEAK_ITERATIONS, threads)
        best = min(best, time.perf_counter() - started)
    return per_round * PEAK_ITERATIONS * threads / best / 1e9


def matmul_gmac_s(kernel: str, weight: torch.Tensor, scale: torch.Tensor, threads: int) -> float:
    """Multiply-adds per second of `kernel` on `weight` at a prefill chunk's 512 rows."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(512, weight.shape[1], generator=torch.Generator().manual_seed(0))
        x = x.to(torch.bfloat16)
        seconds = best_seconds(lambda: MATMUL_KERNELS[kernel](x, weight, scale))
        return 512 * weight.numel() / seconds / 1e9
    finally:
        torch.set_num_threads(previous)


def cpu_features() -> dict[str, object]:
    """The CPU's name and the flags the kernels choose by."""
    name, flags = "", set()
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    wanted = ("avx2", "fma", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return {
        "model_name": name,
        "flags": [flag for flag in wanted if flag in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpus": os.cpu_count(),
    }


def layer_macs_per_token(weights: Qwen3Weights) -> int:
    """Multiply-adds of every decoder layer's matmuls for one token."""
    return sum(linear.weight.numel() for linear in weights.linears[:-1])


def _prefill(engine: CpuQwen3, prompt: list[int]) -> tuple[float, torch.Tensor]:
    """Seconds to the last position's logits from an empty cache, and the logits."""
    engine.prefix_cache.clear()
    cache = engine.new_cache(len(prompt))
    started = time.perf_counter()
    logits = engine.forward(prompt, cache)
    return time.perf_counter() - started, logits


def reference_logits(model: Path, prompt: list[int]) -> torch.Tensor:
    """transformers + GPTQModel's logits after `prompt` (what the engine is tested against)."""
    reference = load_local_model(str(model), device="cpu", engine="transformers").engine
    return reference.forward(prompt, reference.checkout(prompt))


def _second_step_s(engine: CpuQwen3, first: list[int], second: list[int]) -> float:
    """The second prompt's first logits, after the first prompt ran and was kept."""
    engine.prefix_cache.clear()
    cache = engine.checkout(first)
    engine.forward(first[cache.length :], cache)
    engine.checkin(cache)
    started = time.perf_counter()
    cache = engine.checkout(second)
    engine.forward(second[cache.length :], cache)
    seconds = time.perf_counter() - started
    engine.checkin(cache)
    return seconds


def measure(rounds: int) -> dict[str, Any]:
    """The whole report (see the module's docstring)."""
    report: dict[str, Any] = {"cpu": cpu_features(), "threads": torch.get_num_threads()}
    report["load_average_at_start"] = os.getloadavg()
    threads = sorted({1, torch.get_num_threads()})
    report["int8_peak_gmac_s"] = {
        path: {f"{n} threads": round(int8_peak_gmac_s(path, n), 1) for n in threads}
        for path in runnable_paths()
    }
    model = cached_checkpoint("full")
    native = load_local_model(str(model), device="cpu", engine="native", disk_cache_mb=0).engine
    assert isinstance(native, CpuQwen3)
    choices = _before_and_now(native)
    gate_up = native.weights.layers[0].gate_up
    assert gate_up.scale is not None
    report["widest_matmul_gmac_s_at_512_rows"] = {
        choice.prefill: {
            f"{n} threads": round(
                matmul_gmac_s(choice.prefill, gate_up.weight, gate_up.scale, n), 1
            )
            for n in threads
        }
        for choice in choices.values()
    }
    engines = {
        label: CpuQwen3(native.weights, PREFIX_CACHE_BYTES, kernels=choice)
        for label, choice in choices.items()
    }
    rng = random.Random(0)
    prompt = [rng.randrange(VOCAB_TEXT_IDS) for _ in range(PREFILL_TOKENS)]
    numerics = _logits_against_reference(engines, reference_logits(model, prompt), prompt)
    first, second = agent_prompts(model)
    samples = _rounds(engines, rounds, prompt, (first, second))
    macs = layer_macs_per_token(native.weights)
    best_peak = max(  # every core, the fastest path's instruction
        (rates[f"{threads[-1]} threads"] for rates in report["int8_peak_gmac_s"].values()),
        default=None,
    )
    report["kernels"] = {
        label: {**_figures(choices[label], samples[label], macs, best_peak), **numerics[label]}
        for label in engines
    }
    before, now = (report["kernels"][label] for label in ("before", "now"))
    report["prefill_speedup_now_over_before"] = round(
        now["prefill_tok_s"] / before["prefill_tok_s"], 2
    )
    report["second_step_shape"] = {"first_prompt": len(first), "second_prompt": len(second)}
    report["load_average_at_end"] = os.getloadavg()
    return report


def _before_and_now(native: CpuQwen3) -> dict[str, KernelChoice]:
    """The engine's kernels with the prefill kernel the self-test picks without the int8 x int8
    kernels (before) and with them (now), each from the rows it picks."""
    gate_up = native.weights.layers[0].gate_up
    assert gate_up.scale is not None
    choices = {}
    for label, excluded in (("before", frozenset(INT8_X_INT8)), ("now", frozenset())):
        prefill, rows, _ = fastest_prefill(gate_up.weight, gate_up.scale, excluded)
        choices[label] = dataclasses.replace(native.kernels, prefill=prefill, prefill_rows=rows)
    return choices


def _logits_against_reference(
    engines: dict[str, CpuQwen3], expected: torch.Tensor, prompt: list[int]
) -> dict[str, dict[str, object]]:
    """Each engine's logits after `prompt` against the reference's (also the warm-up)."""
    numerics: dict[str, dict[str, object]] = {}
    for label, engine in engines.items():
        logits = _prefill(engine, prompt)[1]
        numerics[label] = {
            "max_abs_logit_diff_vs_reference": round(float((logits - expected).abs().max()), 4),
            "reference_max_abs_logit": round(float(expected.abs().max()), 4),
            "same_argmax_as_reference": int(logits.argmax()) == int(expected.argmax()),
        }
    return numerics


def _rounds(
    engines: dict[str, CpuQwen3],
    rounds: int,
    prompt: list[int],
    agent: tuple[list[int], list[int]],
) -> dict[str, dict[str, list[float]]]:
    """Seconds of each measurement on each engine, engine after engine, round after round (who
    goes first alternates)."""
    samples: dict[str, dict[str, list[float]]] = {label: {} for label in engines}
    for round_index in range(rounds):
        for label in sorted(engines, reverse=round_index % 2 == 1):
            engine = engines[label]
            figures = {
                "prefill_s": _prefill(engine, prompt)[0],
                "second_step_first_token_s": _second_step_s(engine, *agent),
                "second_step_full_prefill_s": _prefill(engine, agent[1])[0],
            }
            print(f"round {round_index}: {label} {figures}", file=sys.stderr, flush=True)
            for key, value in figures.items():
                samples[label].setdefault(key, []).append(value)
    return samples


def _figures(
    choice: KernelChoice, samples: dict[str, list[float]], macs: int, peak: float | None
) -> dict[str, Any]:
    median = {key: statistics.median(values) for key, values in samples.items()}
    matmul_gmac_s = PREFILL_TOKENS * macs / median["prefill_s"] / 1e9
    ttft, full = median["second_step_first_token_s"], median["second_step_full_prefill_s"]
    return {
        "choice": choice.describe(),
        "prefill_from_rows": choice.prefill_rows,
        "prefill_tok_s": round(PREFILL_TOKENS / median["prefill_s"], 1),
        "prefill_matmul_gmac_s": round(matmul_gmac_s, 1),
        "prefill_matmul_fraction_of_int8_peak": peak and round(matmul_gmac_s / peak, 3),
        "second_step_first_token_s": round(ttft, 3),
        "second_step_full_prefill_s": round(full, 3),
        "second_step_fraction_of_full_prefill": round(ttft / full, 3),
        "samples_s": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.int8_prefill", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/int8_prefill.json"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch's and our kernels' (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = measure(args.rounds)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "kernels"}, indent=2))
    for label, figures in report["kernels"].items():
        shown = {k: v for k, v in figures.items() if k != "samples_s"}
        print(label, json.dumps(shown, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
