"""What a user waits for: a fresh `agent run --json` with the default tools, from starting the
process to its first output (thinking, text or a tool call), and the same prompt through a
fresh llama.cpp process to its first token.

`bench.speed` runs it: once with the prefix cache on disk turned off (`--disk-cache-mb 0`, what
every run paid before it existed and the first run still pays), then twice with it on; the
second of those is the cached figure. The repacked weights are cached by the warm-up run
(`bench.speed`'s cold start), as they are for a user after the first run. Those runs are
in-process (`--no-service`).

`python -m bench.fresh_run [--quick] [--out FILE]` compares the three ways a run starts, each
a fresh `agent run` process, on the full-size architecture (random weights) with the default
tools: in-process, through the resident service when none is running yet (cold: the client
starts it), and through it once it is up (warm). The prefix cache on disk is warm for all
three (a first run fills it). Written to `bench/fresh_run.json`.

`python -m bench.fresh_run llama GGUF PROMPTS THREADS` is the llama.cpp side: it loads the GGUF
file and prints `first-token` once it has the first token of the agent's first prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.config import DEFAULT_DISK_CACHE_MB

REPO = Path(__file__).resolve().parents[1]
PROMPT = "What time is it in Tokyo?"
OUTPUT_EVENTS = {"thinking", "text", "tool_call"}
TIMEOUT_S = 600.0


@dataclass(frozen=True)
class FreshRun:
    """One fresh process: seconds from its start to each milestone."""

    run_started_s: float | None = None
    first_output_s: float | None = None
    reused_prompt_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None


def _timed_lines(command: list[str], env: dict[str, str]) -> tuple[list[tuple[float, str]], str]:
    """Run `command`; each stdout line with its seconds from the start, and an error or ''."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    lines = [(time.perf_counter() - started, line) for line in process.stdout]
    _, stderr = process.communicate(timeout=TIMEOUT_S)
    if process.returncode == 0:
        return lines, ""
    return lines, (stderr.strip().splitlines() or [f"exit status {process.returncode}"])[-1]


def agent_run(
    model_dir: Path, threads: int, disk_cache_mb: int, history: Path, service: str = "off"
) -> FreshRun:
    """Start `agent run --json` with the default tools and time its events as they arrive
    (kept in the run history at `history`, as a user's run is, but not in the user's);
    in-process, or with `service` `auto` through the resident service."""
    command = [sys.executable, "-m", "agent", "run", "--json", "--model", str(model_dir)]
    command += ["--threads", str(threads), "--disk-cache-mb", str(disk_cache_mb)]
    command += ["--max-new-tokens", "4", "--seed", "3", PROMPT]
    env = {**os.environ, "AGENT_HISTORY": str(history), "AGENT_SERVICE": service}
    lines, error = _timed_lines(command, env)
    stamps: dict[str, float] = {}
    usage: dict[str, int] = {}
    for seconds, line in lines:
        event = json.loads(line)
        stamps.setdefault("output" if event["type"] in OUTPUT_EVENTS else event["type"], seconds)
        usage = event.get("usage", usage)
    if error or "output" not in stamps:
        return FreshRun(error=f"agent run: {error or 'no output'}")
    return FreshRun(
        run_started_s=stamps.get("run_started"),
        first_output_s=stamps["output"],
        reused_prompt_tokens=usage.get("reused_prompt_tokens"),
        prompt_tokens=usage.get("prompt_tokens"),
    )


def llama_run(gguf: Path, prompts: Path, threads: int) -> FreshRun:
    """A fresh llama.cpp process on the agent's first prompt: start to first token."""
    command = [sys.executable, "-m", "bench.fresh_run", "llama", str(gguf), str(prompts)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    lines, error = _timed_lines([*command, str(threads)], env)
    first = next((seconds for seconds, line in lines if line.strip() == "first-token"), None)
    if error or first is None:
        return FreshRun(error=f"llama.cpp: {error or 'no first token'}")
    prompt_tokens = len(json.loads(prompts.read_text())["agent"][0])
    return FreshRun(first_output_s=first, prompt_tokens=prompt_tokens)


def measure(
    model_dir: Path, threads: int, gguf: Path | None, llama_error: str | None, scratch: Path
) -> dict[str, Any]:
    """The figures `bench.speed` reports under `fresh_agent_run`, with their ratios; `scratch`
    holds `bench.speed`'s prompts.json and takes the runs' history."""
    history = scratch / "history.sqlite3"
    without = agent_run(model_dir, threads, 0, history)
    agent_run(model_dir, threads, DEFAULT_DISK_CACHE_MB, history)  # fills the prefix cache
    cached = agent_run(model_dir, threads, DEFAULT_DISK_CACHE_MB, history)
    prompts = scratch / "prompts.json"
    llama = llama_run(gguf, prompts, threads) if gguf else FreshRun(error=llama_error)
    report: dict[str, Any] = {
        "prompt": PROMPT,
        "ours_without_prefix_cache": asdict(without),
        "ours_cached": asdict(cached),
        "llama_cpp_q8_0": asdict(llama),
    }
    if cached.first_output_s and without.first_output_s:
        report["cached_over_without"] = cached.first_output_s / without.first_output_s
    if cached.first_output_s and llama.first_output_s:
        report["ours_cached_over_llama_cpp"] = cached.first_output_s / llama.first_output_s
    return report


def stop_service() -> None:
    """Stop the resident service of this AGENT_HOME, if one runs."""
    command = [sys.executable, "-m", "agent", "service", "stop"]
    subprocess.run(command, cwd=REPO, capture_output=True, check=False, timeout=60)


def three_starts(model_dir: Path, threads: int, scratch: Path) -> dict[str, Any]:
    """In-process, service cold, service warm: each a fresh `agent run`, first output."""
    history = scratch / "history.sqlite3"
    stop_service()
    agent_run(model_dir, threads, DEFAULT_DISK_CACHE_MB, history)  # fills the prefix cache
    in_process = agent_run(model_dir, threads, DEFAULT_DISK_CACHE_MB, history)
    cold = agent_run(model_dir, threads, DEFAULT_DISK_CACHE_MB, history, service="auto")
    warm = agent_run(model_dir, threads, DEFAULT_DISK_CACHE_MB, history, service="auto")
    stop_service()
    return {
        "in_process": asdict(in_process),
        "service_cold": asdict(cold),
        "service_warm": asdict(warm),
    }


def _cpu() -> str:
    flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[-1].split("\n", 1)[0].split()
    wide = sorted(flag for flag in flags if flag.startswith(("avx512", "avx2", "amx")))
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{model}, {os.cpu_count()} CPUs, {' '.join(wide)}"


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from bench.random_checkpoint import cached_checkpoint

    parser = argparse.ArgumentParser(prog="python -m bench.fresh_run", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/fresh_run.json"))
    parser.add_argument("--quick", action="store_true", help="the tiny model (a smoke run)")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    args = parser.parse_args(argv)
    model_dir = cached_checkpoint("tiny" if args.quick else "full")
    with tempfile.TemporaryDirectory() as scratch:
        figures = three_starts(model_dir, args.threads, Path(scratch))
    report = {
        "model": "tiny random" if args.quick else "full-size architecture, random weights",
        "prompt": PROMPT,
        "tools": "the default tools (MCP time and fetch through uvx, code interpreter, plugins)",
        "cpu": _cpu(),
        "threads": args.threads,
        "when": time.strftime("%Y-%m-%d"),
        **figures,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name in ("in_process", "service_cold", "service_warm"):
        run = figures[name]
        shown = f"{run['first_output_s']:.2f} s" if run["first_output_s"] else run["error"]
        print(f"{name:>12}: first output {shown}")
    print(f"results written to {args.out}")
    return 0


def _llama_first_token(gguf: str, prompts: str, threads: int) -> None:
    from bench import llama_cpp

    first_prompt = json.loads(Path(prompts).read_text())["agent"][0]
    llm = llama_cpp.open_model(Path(gguf), threads)
    next(llm.generate(first_prompt, temp=0.0))
    print("first-token", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] != ["llama"]:
        sys.exit(main())
    if len(sys.argv) != 5:
        sys.exit("usage: python -m bench.fresh_run llama GGUF PROMPTS THREADS")
    _llama_first_token(sys.argv[2], sys.argv[3], int(sys.argv[4]))
