"""Cold start: a fresh process loads our backend and produces the first token of a short chat.

`python -m bench.cold_start MODEL_DIR THREADS` prints `first-token` the moment it has one; the
benchmark times that from the moment it started the process (weights on disk, page cache as
the machine left it).
"""

from __future__ import annotations

import sys


def main() -> int:
    model_dir, threads = sys.argv[1], int(sys.argv[2])
    from qwen_agent.llm.schema import Message

    from agent.backends.local import render_prompt
    from agent.engine.generate import Usage, generate_token_ids
    from agent.engine.loading import load_local_model
    from agent.testing.reproduction import GREEDY

    loaded = load_local_model(model_dir, device="auto", threads=threads)
    prompt = render_prompt(loaded.tokenizer, [Message("user", "Hello")], thinking=False)
    ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    next(generate_token_ids(loaded, ids, GREEDY, 1, 0, Usage()), None)
    print("first-token", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
