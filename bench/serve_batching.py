"""`agent serve`'s batched decoding: aggregate tokens/s at 1, 2, 4 and 8 concurrent streams on
Qwen3-0.6B's full-size architecture (random GPTQ-Int8 weights), against the same streams run
one at a time. Decode on a CPU is bound by reading the weights, so sequences that share a
forward pass should add tokens at little cost each; the target is >= 3x the single-stream
rate at 8 streams.

    python -m bench.serve_batching [--quick] [--tokens 64] [--out bench/serve_batching.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from agent.engine.sampling import SamplingParams
from agent.server.generation import Finish, Generation, ModelService
from bench.random_checkpoint import cached_checkpoint

STREAMS = (1, 2, 4, 8)


def aggregate_rate(service: ModelService, streams: int, tokens: int) -> dict[str, float]:
    """`streams` requests at once, `tokens` each: generated tokens per second of wall time."""
    done: list[Finish] = []

    def one(seed: int) -> None:
        generation = Generation(
            messages=[{"role": "user", "content": f"Tell me story number {seed} about ships."}],
            tools=None,
            tool_choice="none",
            thinking=False,
            sampling=SamplingParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0),
            max_tokens=tokens,
            seed=seed,
        )
        (job,) = service.admit([generation])
        for item in service.generate(job, threading.Event()):
            if isinstance(item, Finish):
                done.append(item)

    workers = [threading.Thread(target=one, args=(seed,)) for seed in range(streams)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.monotonic() - started
    generated = sum(finish.completion_tokens for finish in done)
    return {"streams": streams, "tokens": generated, "wall_s": round(wall, 3),
            "tokens_per_s": round(generated / wall, 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_batching", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/serve_batching.json"))
    parser.add_argument("--quick", action="store_true", help="the tiny random model")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    model = cached_checkpoint("tiny" if args.quick else "full")
    report: dict[str, Any] = {"model": "tiny" if args.quick else "full", "threads": args.threads,
                              "tokens_per_stream": args.tokens}  # fmt: skip
    for label, max_batch in (("batched", 8), ("one_at_a_time", 1)):
        service = ModelService(str(model), max_batch=max_batch, threads=args.threads)
        service.load()
        assert service.ready, service.load_error
        aggregate_rate(service, 1, 8)  # warm up
        report[label] = [aggregate_rate(service, n, args.tokens) for n in STREAMS]
        from agent.engine import loading as local_model

        local_model._LOADED.clear()  # the next service loads its own engine
    single = report["batched"][0]["tokens_per_s"]
    report["speedup_at_8_vs_single_stream"] = round(
        report["batched"][-1]["tokens_per_s"] / single, 2
    )
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for label in ("batched", "one_at_a_time"):
        rates = ", ".join(f"{r['streams']}: {r['tokens_per_s']}" for r in report[label])
        print(f"{label}: tokens/s at streams {rates}")
    print(
        f"speedup at 8 streams: {report['speedup_at_8_vs_single_stream']}x; written to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
