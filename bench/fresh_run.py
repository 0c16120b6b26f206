"""What a user waits for: a fresh `agent run --json` with the default tools, from starting the
process to its first output (thinking, text or a tool call), and the same prompt through a
fresh llama.cpp process to its first token.

`bench.speed` runs it: once with the prefix cache on disk turned off (`--disk-cache-mb 0`, what
every run paid before it existed and the first run still pays), then twice with it on; the
second of those is the cached figure. The repacked weights are cached by the warm-up run
(`bench.speed`'s cold start), as they are for a user after the first run.

`python -m bench.fresh_run llama GGUF PROMPTS THREADS` is the llama.cpp side: it loads the GGUF
file and prints `first-token` once it has the first token of the agent's first prompt.
"""

from __future__ import annotations

import json
import os
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


def agent_run(model_dir: Path, threads: int, disk_cache_mb: int, history: Path) -> FreshRun:
    """Start `agent run --json` with the default tools and time its events as they arrive
    (kept in the run history at `history`, as a user's run is, but not in the user's)."""
    command = [sys.executable, "-m", "agent", "run", "--json", "--model", str(model_dir)]
    command += ["--threads", str(threads), "--disk-cache-mb", str(disk_cache_mb)]
    command += ["--max-new-tokens", "4", "--seed", "3", PROMPT]
    lines, error = _timed_lines(command, {**os.environ, "AGENT_HISTORY": str(history)})
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


def _llama_first_token(gguf: str, prompts: str, threads: int) -> None:
    from bench import llama_cpp

    first_prompt = json.loads(Path(prompts).read_text())["agent"][0]
    llm = llama_cpp.open_model(Path(gguf), threads)
    next(llm.generate(first_prompt, temp=0.0))
    print("first-token", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] != ["llama"] or len(sys.argv) != 5:
        sys.exit("usage: python -m bench.fresh_run llama GGUF PROMPTS THREADS")
    _llama_first_token(sys.argv[2], sys.argv[3], int(sys.argv[4]))
