"""One benchmark path in its own process:
`python -m bench.worker PATH MODEL_DIR PROMPTS_FILE GGUF_OR_EMPTY THREADS`.

Reads one JSON request per line on stdin and answers one JSON line on stdout, so the
benchmark can interleave its questions across paths and read each one's peak memory alone.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from bench.paths import PATHS, BenchPath


def _answer(path: BenchPath, request: dict, prompts: dict) -> dict:
    op = request["op"]
    if op == "prefill":
        return {"seconds": path.prefill(prompts["prefill"])}
    if op == "decode":
        prompt = prompts["contexts"][str(request["context"])]
        return {"seconds": path.decode(prompt, request["steps"])}
    if op == "agent":
        first, second = prompts["agent"]
        return {"seconds": path.second_step_first_token(first, second)}
    if op == "agent_full":
        return {"seconds": path.prefill(prompts["agent"][1])}
    if op == "rss":
        return {"peak_rss_mb": _peak_rss_mb()}
    raise ValueError(f"unknown request {op!r}")


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    parent that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    name, model_dir, prompts_file, gguf, threads = sys.argv[1:6]
    prompts = json.loads(Path(prompts_file).read_text())
    # Answers go to the real stdout; whatever the libraries print goes to stderr.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    started = time.perf_counter()
    try:
        path = PATHS[name](Path(model_dir), Path(gguf) if gguf else None, int(threads))
    except Exception as exc:  # a path that cannot run here is reported, not fatal
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), file=answers, flush=True)
        return 1
    print(json.dumps({"load_s": time.perf_counter() - started}), file=answers, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        try:
            answer = _answer(path, request, prompts)
        except Exception as exc:  # reported for this path; the others go on
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), file=answers, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
