"""The grammar's cost per constrained token, apart from the model, on Qwen3's full vocabulary.

    python -m bench.grammar_cost --out bench/grammar_cost.json

Random logits stand in for the model's: each step computes the mask, applies it, samples (timed
apart, for comparison) and advances the matcher, for the functions of 40 BFCL entries with the
call required from the first token.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench.random_checkpoint import cached_checkpoint

STEPS_PER_CALL = 60
FINISH_AFTER = 40


def measure(threads: int) -> dict[str, float | int]:
    """Milliseconds per constrained token for the grammar and for sampling."""
    from agent.backends.tool_choice import REQUIRED
    from agent.engine.constrained import ToolCallConstraint, grammar_tools
    from agent.engine.sampling import SamplingParams, sample_next_token
    from agent.engine.tokenizer import FastTokenizer
    from agent.eval.bfcl_data import load_entries, tool_schema

    torch.set_num_threads(threads)
    model = cached_checkpoint("full")
    stops = frozenset({151643, 151645})
    tools = grammar_tools(model, FastTokenizer.from_dir(model), 151936, stops)
    params = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)
    generator = torch.Generator().manual_seed(0)
    seen = torch.zeros(151936, dtype=torch.bool)
    grammar_s = sampling_s = 0.0
    steps = 0
    for entry in load_entries(["simple", "parallel_multiple"], limit=20):
        functions = [tool_schema(function) for function in entry.functions]
        constraint = ToolCallConstraint(tools, functions, REQUIRED)
        for step in range(STEPS_PER_CALL):
            logits = torch.randn(151936, generator=generator)
            started = time.perf_counter()
            allowed = constraint.allowed(finishing=step > FINISH_AFTER)
            logits = logits.masked_fill(~allowed, float("-inf")) if allowed is not None else logits
            masked = time.perf_counter()
            token = sample_next_token(logits, params, seen, generator)
            sampled = time.perf_counter()
            if token in stops:
                break
            constraint.advance(token)
            for forced in constraint.forced():
                constraint.advance(forced)
            grammar_s += (masked - started) + (time.perf_counter() - sampled)
            sampling_s += sampled - masked
            steps += 1
    return {
        "threads": threads,
        "constrained_steps": steps,
        "grammar_ms_per_token": round(1000 * grammar_s / steps, 3),
        "sampling_ms_per_token": round(1000 * sampling_s / steps, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line; writes one result per thread count to --out."""
    parser = argparse.ArgumentParser(prog="python -m bench.grammar_cost")
    parser.add_argument("--out", type=Path, default=Path("bench/grammar_cost.json"))
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")
    results = [measure(threads) for threads in (1, 2)]
    for result in results:
        print(json.dumps(result))
    args.out.write_text(json.dumps({"results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
