"""Tool-call reliability and the grammar's cost, measured with `agent eval bfcl`'s harness.

    python -m bench.tool_calls --out bench/tool_calls.json            (about an hour on 2 cores)
    python -m bench.tool_calls --full-limit 2 --tiny-limit 5 --out X  (a few minutes)
    python -m bench.tool_calls --only full-random                     (one run, merged into --out)

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
# name: (model, --require-tool, grammar on)
RUNS = {
    "tiny-random": ("tiny", True, True),
    "tiny-trained": ("trained", False, True),
    "tiny-trained-free": ("trained", False, False),
    "full-random": ("full", True, True),
    "full-random-free": ("full", False, False),
}


def _measure(
    name: str, model: Path, require: bool, constrain: bool, limit: int | None
) -> dict[str, Any]:
    from agent.config import Settings
    from agent.eval.bfcl import run_entries, summarize
    from agent.eval.bfcl_data import CATEGORIES, load_entries
    from agent.loop.assistant import build_llm

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
        "run": name,
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
    parser.add_argument("--full-limit", type=int, default=16, help="entries per category")
    parser.add_argument(
        "--only", help=f"these runs only, replacing theirs in --out: {', '.join(RUNS)}"
    )
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")
    chosen = args.only.split(",") if args.only else list(RUNS)
    if unknown := set(chosen) - set(RUNS):
        parser.error(f"--only: unknown run(s) {', '.join(sorted(unknown))}")
    # Only the checkpoints the chosen runs use are built (the full-size one is 0.6 GB).
    models = {
        "tiny": lambda: cached_tiny_checkpoint() / GPTQ_SUBDIR,
        "trained": lambda: cached_tiny_checkpoint() / TRAINED_GPTQ_SUBDIR,
        "full": lambda: cached_checkpoint("full"),
    }
    runs = {run["run"]: run for run in _earlier_runs(args.out) if args.only}
    for name in chosen:
        model, require, constrain = RUNS[name]
        limit = args.full_limit if model == "full" else args.tiny_limit
        run = runs[name] = _measure(name, models[model](), require, constrain, limit)
        print(json.dumps({"run": name, **run["scores"][-1]}), flush=True)
        ordered = [runs[key] for key in RUNS if key in runs]
        args.out.write_text(json.dumps({"runs": ordered}, indent=1) + "\n")
    return 0


def _earlier_runs(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["runs"]) if path.is_file() else []


if __name__ == "__main__":
    raise SystemExit(main())
