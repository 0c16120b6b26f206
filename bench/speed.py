"""Speed of every way to run Qwen3-0.6B-GPTQ-Int8 here, side by side, in one run.

`python -m bench.speed --out results.json` (add `--quick` for a smoke run on the tiny model).
Each path runs in its own worker process; the benchmark asks them the same questions in turn,
round after round, so drift on a shared machine hits every path alike, and reports medians.
Before them, `bench.fresh_run` times fresh `agent run` processes (what a user waits for).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench import fresh_run, llama_cpp
from bench.bandwidth import copy_bandwidth_gb_s, read_bandwidth_gb_s
from bench.machine import cpu_features
from bench.paths import LlamaCpp, OurBackend, SeedQuickstart
from bench.random_checkpoint import cached_checkpoint

REPO = Path(__file__).resolve().parents[1]
VOCAB_TEXT_IDS = 151_643  # ordinary tokens; random prompts stay clear of special ones


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    size: str
    contexts: tuple[int, ...]
    prefill_tokens: int
    decode_steps: int
    rounds: int
    threads: int
    skip: tuple[str, ...] = ()  # paths left out (reported as not measured)


FULL = Plan("full", (32, 1024, 4096), 1024, 32, 3, os.cpu_count() or 1)
QUICK = Plan("tiny", (32, 256), 256, 8, 1, 1)


@dataclass
class PathResult:
    """Medians over the rounds, for one path."""

    name: str
    error: str | None = None
    load_s: float | None = None
    peak_rss_mb: float | None = None
    prefill_tok_s: float | None = None
    decode_tok_s: dict[str, float] = field(default_factory=dict)
    second_step_ttft_s: float | None = None  # after the first step ran: prefix reuse counts
    second_step_full_prefill_s: float | None = None  # the same prompt from an empty cache
    samples: dict[str, list[float]] = field(default_factory=dict)


class Worker:
    """A path's process, answering one request at a time."""

    def __init__(self, name: str, model_dir: Path, prompts: Path, gguf: Path | None, threads: int):
        command = [sys.executable, "-m", "bench.worker", name, str(model_dir), str(prompts)]
        command += [str(gguf or ""), str(threads)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            return {"error": f"worker exited with {self.process.wait()}"}
        return dict(json.loads(line))

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:  # it died on an earlier request
            return {"error": f"worker exited with {self.process.wait()}"}
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the worker stops at the end of its input
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def decode_bytes_per_token(model_dir: Path) -> int:
    """Weight bytes one decode step reads in our engine (every matmul, int8 lm_head)."""
    from agent.engine.weights import load_qwen3_weights

    return load_qwen3_weights(model_dir).nbytes


def agent_prompts(model_dir: Path) -> tuple[list[int], list[int]]:
    """The two model calls of a real agent run: system prompt with every default tool's schema
    and a question; then the same with the tool call and its result."""
    from transformers import AutoTokenizer

    from agent.testing.transcripts import load_tool_schemas, render_transcript, time_task

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    transcript = time_task(random.Random(0), thinking=False)
    (first, _), (second, _) = render_transcript(transcript, tokenizer, load_tool_schemas())[:2]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in (first, second)]
    return ids[0], ids[1]


def write_prompts(plan: Plan, model_dir: Path, into: Path) -> None:
    rng = random.Random(0)
    longest = max(*plan.contexts, plan.prefill_tokens)
    tokens = [rng.randrange(VOCAB_TEXT_IDS) for _ in range(longest)]
    prompts = {
        "prefill": tokens[: plan.prefill_tokens],
        "contexts": {str(c): tokens[:c] for c in plan.contexts},
        "agent": agent_prompts(model_dir),
    }
    into.write_text(json.dumps(prompts))


def cold_start_s(model_dir: Path, threads: int) -> float:
    """Seconds from starting a process to its first token (see bench/cold_start.py)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench.cold_start", str(model_dir), str(threads)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "first-token" in done.stdout
    return time.perf_counter() - started


def measure(plan: Plan, out: Path) -> dict[str, Any]:
    """Run every path, interleaved, and write the results to `out`."""
    model_dir = cached_checkpoint(plan.size)
    gguf, why_not = None, llama_cpp.unavailable_reason()
    if why_not is None:
        gguf = llama_cpp.gguf_for(model_dir)
    results = {name: PathResult(name) for name in (SeedQuickstart.name, OurBackend.name)}
    results[LlamaCpp.name] = PathResult(LlamaCpp.name, error=why_not)
    for name in plan.skip:
        results[name].error = "left out with --skip"
    cold = [cold_start_s(model_dir, plan.threads) for _ in range(2)]  # the first may repack
    bandwidth: list[tuple[float, float]] = []  # (copy, read) GB/s after each round
    with tempfile.TemporaryDirectory() as scratch:
        prompts = Path(scratch) / "prompts.json"
        write_prompts(plan, model_dir, prompts)
        fresh = fresh_run.measure(model_dir, plan.threads, gguf, why_not, Path(scratch))
        workers = {}
        for name, result in results.items():
            if result.error is None:
                worker = Worker(name, model_dir, prompts, gguf, plan.threads)
                result.error, result.load_s = worker.ready.get("error"), worker.ready.get("load_s")
                if result.error is None:
                    workers[name] = worker
        try:
            _one_round(plan, workers, results, -1)
            for round_index in range(plan.rounds):
                _one_round(plan, workers, results, round_index)
                bandwidth.append(
                    (copy_bandwidth_gb_s(plan.threads), read_bandwidth_gb_s(plan.threads))
                )
            for name, worker in workers.items():
                if results[name].error is None:
                    results[name].peak_rss_mb = worker.ask(op="rss").get("peak_rss_mb")
        finally:
            for worker in workers.values():
                worker.close()
    report = _report(plan, model_dir, results, bandwidth, cold)
    report["fresh_agent_run"] = fresh
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _requests(plan: Plan, warm_up: bool) -> list[tuple[str, dict[str, Any]]]:
    """What each path is asked in a round; the warm-up (kernels compile, caches fill) is short."""
    decode = [
        (f"decode@{c}", {"op": "decode", "context": c, "steps": plan.decode_steps})
        for c in plan.contexts
    ]
    if warm_up:
        return [("prefill", {"op": "prefill"}), decode[0]]
    return [
        ("prefill", {"op": "prefill"}),
        *decode,
        ("second_step_ttft", {"op": "agent"}),
        ("second_step_full_prefill", {"op": "agent_full"}),
    ]


def _one_round(
    plan: Plan, workers: dict[str, Worker], results: dict[str, PathResult], round_index: int
) -> None:
    """Every request to every path in turn; round -1 is the warm-up, its answers dropped."""
    for key, request in _requests(plan, warm_up=round_index < 0):
        names = [name for name in workers if results[name].error is None]
        shift = max(round_index, 0) % max(len(names), 1)  # another path goes first each round
        for name in names[shift:] + names[:shift]:
            answer = workers[name].ask(**request)
            if "error" in answer:
                results[name].error = f"{key}: {answer['error']}"
            elif round_index >= 0:
                results[name].samples.setdefault(key, []).append(answer["seconds"])
            print(f"round {round_index}: {name} {key} {answer}", file=sys.stderr, flush=True)


def _report(
    plan: Plan,
    model_dir: Path,
    results: dict[str, PathResult],
    bandwidth: list[tuple[float, float]],
    cold: list[float],
) -> dict[str, Any]:
    for result in results.values():
        samples = {k: statistics.median(v) for k, v in result.samples.items()}
        if "prefill" in samples:
            result.prefill_tok_s = plan.prefill_tokens / samples["prefill"]
        for context in plan.contexts:
            if f"decode@{context}" in samples:
                rate = plan.decode_steps / samples[f"decode@{context}"]
                result.decode_tok_s[str(context)] = rate
        result.second_step_ttft_s = samples.get("second_step_ttft")
        result.second_step_full_prefill_s = samples.get("second_step_full_prefill")
    bytes_per_token = decode_bytes_per_token(model_dir)
    if not bandwidth:
        bandwidth = [(copy_bandwidth_gb_s(plan.threads), read_bandwidth_gb_s(plan.threads))]
    copy_gb_s = statistics.median(copy for copy, _ in bandwidth)
    read_gb_s = statistics.median(read for _, read in bandwidth)
    return {
        "plan": asdict(plan),
        "model": model_dir.name,  # under $AGENT_HOME/cache/bench/
        "machine": {**cpu_features(), "torch": torch.__version__},
        "copy_bandwidth_gb_s": copy_gb_s,
        "decode_bytes_per_token": bytes_per_token,
        "bandwidth_bound_tok_s": copy_gb_s * 1e9 / bytes_per_token,
        "read_bandwidth_gb_s": read_gb_s,
        "read_bound_tok_s": read_gb_s * 1e9 / bytes_per_token,
        "cold_start_s": {"first_run": cold[0], "later_run": cold[1]},
        "paths": {name: asdict(result) for name, result in results.items()},
    }


def print_table(report: dict[str, Any]) -> None:
    """The results with ratios to path (a) and to the bandwidth bound."""
    paths = report["paths"]
    base = paths[SeedQuickstart.name]
    bound, read_bound = report["bandwidth_bound_tok_s"], report["read_bound_tok_s"]
    print(
        f"copy bandwidth {report['copy_bandwidth_gb_s']:.1f} GB/s, read bandwidth "
        f"{report['read_bandwidth_gb_s']:.1f} GB/s, "
        f"{report['decode_bytes_per_token'] / 1e6:.0f} MB read per token: "
        f"decode bound {bound:.1f} tok/s (copy), {read_bound:.1f} tok/s (read)"
    )
    print(f"cold start (ours): {report['cold_start_s']}")
    fresh = report["fresh_agent_run"]
    for name in ("ours_without_prefix_cache", "ours_cached", "llama_cpp_q8_0"):
        run = fresh[name]
        shown = run["error"] or f"first output {run['first_output_s']:.2f} s"
        print(f"fresh `agent run` ({name}): {shown}")
    for name, result in paths.items():
        if result["error"]:
            print(f"{name}: not measured ({result['error']})")
            continue
        cells = [f"load {result['load_s']:.1f} s", f"rss {result['peak_rss_mb']:.0f} MB"]
        cells.append(f"prefill {result['prefill_tok_s']:.1f} tok/s")
        for context, rate in result["decode_tok_s"].items():
            # Against path (a), the quickstart, where it was measured.
            against = base["decode_tok_s"].get(context)
            shown = f"x{rate / against:.2f} a, " if against else ""
            cells.append(
                f"decode@{context} {rate:.1f} tok/s ({shown}{rate / bound:.2f} copy "
                f"bound, {rate / read_bound:.2f} read bound)"
            )
        ttft, full = result["second_step_ttft_s"], result["second_step_full_prefill_s"]
        cells.append(f"2nd-step ttft {ttft:.3f} s ({ttft / full:.2f} of a full prefill)")
        print(f"{name}: " + "; ".join(cells))


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results.json"))
    parser.add_argument("--quick", action="store_true", help="tiny model, one short round")
    parser.add_argument("--rounds", type=_positive, help="rounds of interleaved measurements")
    parser.add_argument("--threads", type=_positive, help="CPU threads for every path")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=[SeedQuickstart.name, LlamaCpp.name],
        help="leave a path out (repeatable): the quickstart can take hours on a CPU without "
        "bf16 instructions",
    )
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")
    plan = QUICK if args.quick else FULL
    overrides = {"rounds": args.rounds, "threads": args.threads, "skip": tuple(args.skip)}
    plan = Plan(**{**asdict(plan), **{k: v for k, v in overrides.items() if v}})
    report = measure(plan, args.out)
    print_table(report)
    print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
