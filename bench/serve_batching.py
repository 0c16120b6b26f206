"""`agent serve`'s batched decoding on Qwen3-0.6B's full-size architecture (random GPTQ-Int8
weights), measured in one run against its baselines:

- one stream on its fastest path: each decoded token one compiled call (`CpuQwen3.forward`);
- aggregate decode of 8 streams in-process, each step one compiled call for all of them
  (`CpuQwen3.forward_batch`), and the same through torch layer by layer (the fallback);
- a real `agent serve` on 127.0.0.1 over HTTP: one request alone, then 8 at once.

Ratios: the aggregate at 8 streams against one stream on its fastest path (the target is >= 5x),
and, over HTTP, against one request through the same batched server. Decode on a CPU reads
every weight once per step, so streams that share a step share that read; what they cannot
share is the arithmetic, 8 multiply-adds per weight at 8 streams. The CPU's features and the
load average (the machine may be shared) are written beside the figures.

    python -m bench.serve_batching [--quick] [--tokens 64] [--out bench/serve_batching.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from agent.engine.loading import load_local_model
from agent.engine.model import CpuQwen3
from bench.machine import cpu_features
from bench.random_checkpoint import cached_checkpoint

STREAMS = 8
PROMPT_TOKENS = 32  # each in-process stream's prompt; stream n's is n tokens longer
READY_TIMEOUT_S = 900


def _rate(streams: int, tokens: int, wall_s: float, cpu_s: float) -> dict[str, Any]:
    """Tokens a second of wall time, and a second of the decoding process's CPU time (on a
    shared machine the wall time counts the others' work too)."""
    return {"streams": streams, "tokens": tokens, "wall_s": round(wall_s, 3),
            "tokens_per_s": round(tokens / wall_s, 2), "cpu_s": round(cpu_s, 3),
            "tokens_per_cpu_s": round(tokens / cpu_s, 2), "load_1min": _load()}  # fmt: skip


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def decode_rate(engine: CpuQwen3, streams: int, steps: int) -> dict[str, Any]:
    """`streams` sequences decoding `steps` tokens each: one at a time through `forward` (one
    stream's path) when `streams` is 1, else all of them a step through `forward_batch`."""
    caches = []
    for n in range(streams):
        prompt = [(i * 7919 + n) % 150_000 for i in range(PROMPT_TOKENS + n)]
        caches.append(engine.new_cache(len(prompt) + steps))
        engine.forward(prompt, caches[-1])
    wall, cpu = time.monotonic(), time.process_time()
    for step in range(steps):
        tokens = [(step * 31 + n * 17) % 150_000 for n in range(streams)]
        if streams == 1:
            engine.forward(tokens, caches[0])
        else:
            engine.forward_batch(tokens, caches)
    wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    return _rate(streams, streams * steps, wall, cpu)


def in_process(model: Path, tokens: int, threads: int) -> dict[str, Any]:
    """One stream's fastest path, and 8 streams batched, fused and through torch."""
    engine = load_local_model(str(model), threads=threads).engine
    assert isinstance(engine, CpuQwen3)
    unfused = CpuQwen3(engine.weights, 0, kernels=engine.kernels)
    unfused.fused_decode = None  # the same kernels, a step through torch layer by layer
    decode_rate(engine, 1, 4)  # warm up
    report: dict[str, Any] = {
        "kernels": engine.kernels.describe(),
        "fused_decode": engine.fused_decode is not None,
        "one_stream_fastest_path": decode_rate(engine, 1, tokens),
        "batched": decode_rate(engine, STREAMS, tokens),  # fused where `fused_decode`
        "batched_torch_layer_by_layer": decode_rate(unfused, STREAMS, tokens),
    }
    report["one_stream_again"] = decode_rate(engine, 1, tokens)  # how much the load moved
    return report


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _chat(client: httpx.Client, url: str, seed: int, tokens: int) -> int:
    """One chat completion of up to `tokens` tokens; the tokens it generated."""
    message = {"role": "user", "content": f"Tell me story number {seed} about ships."}
    body = {"model": "bench", "messages": [message], "max_tokens": tokens, "temperature": 0.7,
            "seed": seed}  # fmt: skip
    response = client.post(f"{url}/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


def http_rate(client: httpx.Client, url: str, server: int, streams: int, tokens: int) -> dict:
    """`streams` requests at once to the server of process id `server`: generated tokens a
    second (prefill included)."""
    wall, cpu = time.monotonic(), _cpu_seconds(server)
    with ThreadPoolExecutor(streams) as pool:
        done = list(pool.map(lambda seed: _chat(client, url, seed, tokens), range(streams)))
    return _rate(streams, sum(done), time.monotonic() - wall, _cpu_seconds(server) - cpu)


def _cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of process `pid` so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def over_http(model: Path, tokens: int, threads: int) -> dict[str, Any]:
    """A real `agent serve` on 127.0.0.1: one request, then STREAMS at once."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}  # this checkout
    command = [sys.executable, "-m", "agent", "serve", "--model", str(model), "--port",
               str(port), "--threads", str(threads), "--served-model-name", "bench"]  # fmt: skip
    with tempfile.TemporaryFile() as log, httpx.Client() as client:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            _wait_ready(client, url, server)
            _chat(client, url, 0, 8)  # warm up
            one = http_rate(client, url, server.pid, 1, tokens)
            many = http_rate(client, url, server.pid, STREAMS, tokens)
        except Exception:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return {"one_request": one, f"{STREAMS}_requests": many}


def _wait_ready(client: httpx.Client, url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"agent serve exited with {server.returncode}")
        try:
            if client.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError("agent serve did not load the model in time")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_batching", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/serve_batching.json"))
    parser.add_argument("--quick", action="store_true", help="the tiny random model")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    model = cached_checkpoint("tiny" if args.quick else "full")
    report: dict[str, Any] = {
        "model": "tiny" if args.quick else "full",
        "threads": args.threads,
        "tokens_per_stream": args.tokens,
        "machine": cpu_features(),
        "load_1min_at_start": _load(),
        "in_process": in_process(model, args.tokens, args.threads),
        "http": over_http(model, args.tokens, args.threads),
        "load_1min_at_end": _load(),
    }
    local, http = report["in_process"], report["http"]
    # One stream is measured before and after the batches: the faster of the two, so that a
    # slow first run (caches, clocks) does not flatter the ratios.
    fastest = max(
        local[key]["tokens_per_s"] for key in ("one_stream_fastest_path", "one_stream_again")
    )
    report["ratios"] = {
        "batched_8_vs_one_stream_fastest_path": round(
            local["batched"]["tokens_per_s"] / fastest, 2
        ),
        "batched_torch_8_vs_one_stream_fastest_path": round(
            local["batched_torch_layer_by_layer"]["tokens_per_s"] / fastest, 2
        ),
        "http_8_vs_one_stream_fastest_path": round(
            http[f"{STREAMS}_requests"]["tokens_per_s"] / fastest, 2
        ),
        "http_8_vs_http_1_batched_path_at_one_stream": round(
            http[f"{STREAMS}_requests"]["tokens_per_s"] / http["one_request"]["tokens_per_s"], 2
        ),
    }
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
