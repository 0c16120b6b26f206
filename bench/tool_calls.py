"""Tool-call reliability and the grammar's cost, measured with `agent eval bfcl`'s harness.

    python -m bench.tool_calls --out bench/tool_calls.json            (about an hour on 2 cores)
    python -m bench.tool_calls --full-limit 2 --tiny-limit 5 --out X  (a few minutes)

Runs, each over BFCL's five single-turn categories:
- the tiny test model with random weights, constrained from the first token (`--require-tool`):
  nonsense, but every call must parse and fit its schema;
- the trained tiny model (it knows only our own tools) with and without the grammar;
- the full-size Qwen3-0.6B architecture with random GPTQ weights, constrained, and without the
  grammar (`--full-limit` entries per category: ~20 s each here).
For each: the harness's shares and the model calls' token counts and timings, from which the
grammar's cost per token is the mask time over the tokens it constrained.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.random_checkpoint import cached_checkpoint

MAX_NEW_TOKENS = 128


def _measure(model: Path, require: bool, constrain: bool, limit: int | None) -> dict[str, Any]:
    from agent.assistant import build_llm
    from agent.config import Settings
    from agent.eval.bfcl import run_entries, summarize
    from agent.eval.bfcl_data import CATEGORIES, load_entries

    settings = Settings(
        model=str(model),
        device="cpu",
        constrain=constrain,
        require_tool=require,
        max_new_tokens=MAX_NEW_TOKENS,
        seed=0,
    )
    llm: Any = build_llm(settings)
    started = time.monotonic()
    results = list(run_entries(llm, load_entries(CATEGORIES, limit), require))
    usage = llm.usage
    free_tokens = usage.completion_tokens - usage.constrained_tokens
    return {
        "model": model.name,
        "require_tool": require,
        "constrain": constrain,
        "limit_per_category": limit,
        "max_new_tokens": MAX_NEW_TOKENS,
        "wall_s": round(time.monotonic() - started, 1),
        "scores": [asdict(score) for score in summarize(results)],
        "tokens": {
            "generated": usage.completion_tokens,
            "constrained": usage.constrained_tokens,
            "forced": usage.forced_tokens,
            "unconstrained": free_tokens,
        },
        "mask_ms_per_constrained_token": _ms(usage.constrain_s, usage.constrained_tokens),
        "decode_ms_per_token": _ms(usage.decode_s, usage.completion_tokens),
    }


def _ms(seconds: float, count: int) -> float | None:
    return round(1000 * seconds / count, 3) if count else None


def main(argv: list[str] | None = None) -> int:
    """Command line; writes the report to --out as it goes."""
    from agent.testing.tiny_model import GPTQ_SUBDIR, TRAINED_GPTQ_SUBDIR, cached_tiny_checkpoint

    parser = argparse.ArgumentParser(prog="python -m bench.tool_calls")
    parser.add_argument("--out", type=Path, default=Path("bench/tool_calls.json"))
    parser.add_argument("--tiny-limit", type=int, help="entries per category (default: all)")
    parser.add_argument("--full-limit", type=int, default=10, help="entries per category")
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")
    tiny = cached_tiny_checkpoint()
    full = cached_checkpoint("full")
    plan = [
        (tiny / GPTQ_SUBDIR, True, True, args.tiny_limit),
        (tiny / TRAINED_GPTQ_SUBDIR, False, True, args.tiny_limit),
        (tiny / TRAINED_GPTQ_SUBDIR, False, False, args.tiny_limit),
        (full, True, True, args.full_limit),
        (full, False, False, args.full_limit),
    ]
    runs = []
    for model, require, constrain, limit in plan:
        runs.append(_measure(model, require, constrain, limit))
        run = runs[-1]
        print(json.dumps({k: run[k] for k in ("model", "require_tool", "constrain")}))
        print(json.dumps(run["scores"][-1]))
        args.out.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
