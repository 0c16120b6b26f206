"""The per-token work outside the model, against the answer's length: is it constant?

    python -m bench.per_token --out bench/per_token.json

Two measurements on the tiny test checkpoint:
- `stream`: the path every generated piece takes after the model, as `agent run` runs it
  (LocalQwen's stream, Qwen-Agent's function-calling post-processing, our Assistant, the run's
  snapshot-to-event conversion), with the model's pieces replaced by a scripted answer (a
  stand-in for the model, so only the path is timed) of 500 to 4,000 tokens;
- `decode`: the streaming decoder, sampling with Qwen3's settings and presence penalty, at the
  start and the end of a 4,000-token answer.
Milliseconds per token for each length; constant work gives the same figure at every length.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

LENGTHS = (500, 1000, 2000, 4000)
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while"]


def _scripted_pieces(count: int) -> list[str]:
    return [f" {WORDS[i % len(WORDS)]}" for i in range(count)]


def stream_ms_per_token(model_dir: Path) -> dict[str, float]:
    """Per-token milliseconds of the post-model path, for scripted answers of each length."""
    from agent.config import load_settings
    from agent.loop.assistant import build_assistant, build_llm
    from agent.loop.runner import RunInfo, run_events
    from agent.tools.toolset import open_toolset

    # With a tool offered, as in real runs: Qwen-Agent's function-calling path then parses
    # every piece. The code interpreter's kernel starts only when called, which it is not.
    settings = load_settings({"model": str(model_dir), "tools": ("code_interpreter",)})
    llm: Any = build_llm(settings)
    scratch = Path(tempfile.mkdtemp(prefix="per-token-"))
    toolset = open_toolset(settings, scratch / "work", scratch / "logs")
    assistant = build_assistant(settings, llm, toolset)
    results = {}
    for count in LENGTHS:
        pieces = _scripted_pieces(count)

        def scripted(messages: Any, generate_cfg: Any, pieces: list[str] = pieces) -> Iterator[str]:
            del messages, generate_cfg
            yield from pieces

        llm._generate = scripted  # the stand-in for the model: only the path is timed
        info = RunInfo(model="scripted", backend="local", thinking=False, tools=[])
        started = time.perf_counter()
        events = list(run_events(assistant, [{"role": "user", "content": "go"}], info))
        seconds = time.perf_counter() - started
        assert events[-1].status == "answered", events[-1]
        results[f"{count} tokens"] = round(1000 * seconds / count, 4)
    toolset.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def decode_ms_per_token(model_dir: Path, count: int = 4000, window: int = 200) -> dict[str, float]:
    """Streaming decoder plus sampling (0.7/0.8/20/0, presence 1.5), first and last `window`
    tokens of a `count`-token answer, on Qwen3's full vocabulary."""
    from agent.engine.generate import IncrementalDecoder
    from agent.engine.loading import load_local_model
    from agent.engine.sampling import SamplingParams, sample_next_token

    loaded = load_local_model(str(model_dir), device="cpu")
    decoder = IncrementalDecoder(loaded.tokenizer)
    params = SamplingParams(0.7, 0.8, 20, 0.0, presence_penalty=1.5)
    generator = torch.Generator().manual_seed(0)
    vocab = 151_936
    seen = torch.zeros(vocab)
    tokens = loaded.tokenizer(" ".join(WORDS * (count // len(WORDS) + 1)))["input_ids"][:count]
    times = []
    for token in tokens:
        logits = torch.randn(vocab, generator=generator)
        started = time.perf_counter()
        sample_next_token(logits, params, seen, generator)
        seen[token] += 1
        decoder.push(token)
        times.append(time.perf_counter() - started)
    return {
        f"first {window} tokens": round(1000 * sum(times[:window]) / window, 4),
        f"last {window} tokens": round(1000 * sum(times[-window:]) / window, 4),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line; writes both measurements to --out."""
    from agent.testing.tiny_model import TRAINED_GPTQ_SUBDIR, cached_tiny_checkpoint

    parser = argparse.ArgumentParser(prog="python -m bench.per_token")
    parser.add_argument("--out", type=Path, default=Path("bench/per_token.json"))
    args = parser.parse_args(argv)
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")
    model = cached_tiny_checkpoint() / TRAINED_GPTQ_SUBDIR
    report = {
        "stream_ms_per_token": stream_ms_per_token(model),
        "decode_and_sampling_ms_per_token": decode_ms_per_token(model),
    }
    print(json.dumps(report, indent=1))
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
