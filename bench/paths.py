"""The ways of running the model that the speed benchmark compares, one class per path.

Each imports what it runs on only when built, so a worker's peak memory is its path's alone.

Each path answers the same questions (load, prefill, decode at a context, time to first token
of an agent's second step) so the benchmark can ask them in turn, in separate processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class BenchPath(Protocol):
    """What the benchmark asks of every path; each answer is seconds of wall-clock time."""

    name: str

    def prefill(self, prompt: list[int]) -> float: ...

    def decode(self, prompt: list[int], steps: int) -> float: ...

    def second_step_first_token(self, first: list[int], second: list[int]) -> float: ...


class SeedQuickstart:
    """(a) The model card's quickstart: `from_pretrained(dtype="auto", device_map="auto")` and
    `generate`, every default left alone (GPTQModel's default kernel, transformers' cache)."""

    name = "transformers-quickstart"

    def __init__(self, model_dir: Path, gguf: Path | None, threads: int) -> None:
        del gguf
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype="auto", device_map="auto"
        )

    def _generate(self, prompt: list[int], new_tokens: int) -> float:
        import torch

        inputs = torch.tensor([prompt])
        started = time.perf_counter()
        self.model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
        )
        return time.perf_counter() - started

    def prefill(self, prompt: list[int]) -> float:
        return self._generate(prompt, 1)

    def decode(self, prompt: list[int], steps: int) -> float:
        return self._generate(prompt, steps + 1) - self._generate(prompt, 1)

    def second_step_first_token(self, first: list[int], second: list[int]) -> float:
        self._generate(first, 1)
        return self._generate(second, 1)


class OurBackend:
    """(b) Our local backend as `agent run` loads it (native engine on CPU, prefix reuse)."""

    name = "ours"

    def __init__(self, model_dir: Path, gguf: Path | None, threads: int) -> None:
        del gguf
        from agent.engine.loading import load_local_model

        self.loaded = load_local_model(str(model_dir), device="auto", threads=threads)
        self.engine: Any = self.loaded.engine

    def prefill(self, prompt: list[int]) -> float:
        self.engine.prefix_cache.clear()
        cache = self.engine.checkout(prompt)
        started = time.perf_counter()
        self.engine.forward(prompt, cache)
        return time.perf_counter() - started

    def decode(self, prompt: list[int], steps: int) -> float:
        self.engine.prefix_cache.clear()
        cache = self.engine.checkout(prompt)
        token = int(self.engine.forward(prompt, cache).argmax())
        started = time.perf_counter()
        for _ in range(steps):
            token = int(self.engine.forward([token], cache).argmax())
        return time.perf_counter() - started

    def second_step_first_token(self, first: list[int], second: list[int]) -> float:
        from agent.engine.generate import Usage, generate_token_ids
        from agent.engine.sampling import SamplingParams

        greedy = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0)
        self.engine.prefix_cache.clear()
        list(generate_token_ids(self.loaded, first, greedy, 1, 0, Usage()))
        started = time.perf_counter()
        next(generate_token_ids(self.loaded, second, greedy, 1, 0, Usage()), None)
        return time.perf_counter() - started


class LlamaCpp:
    """(c) llama.cpp through llama-cpp-python, on the same weights converted to GGUF Q8_0."""

    name = "llama.cpp-q8_0"

    def __init__(self, model_dir: Path, gguf: Path | None, threads: int) -> None:
        from bench import llama_cpp

        if gguf is None:
            raise RuntimeError("no GGUF file (run `python -m bench.llama_cpp setup`)")
        self.llm = llama_cpp.open_model(gguf, threads)

    def prefill(self, prompt: list[int]) -> float:
        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(prompt)
        return time.perf_counter() - started

    def decode(self, prompt: list[int], steps: int) -> float:
        self.llm.reset()
        self.llm.eval(prompt)
        started = time.perf_counter()
        for step in range(steps):  # the fed token does not change the work a step does
            self.llm.eval([prompt[step % len(prompt)]])
        return time.perf_counter() - started

    def second_step_first_token(self, first: list[int], second: list[int]) -> float:
        self.llm.reset()
        self.llm.eval(first)
        started = time.perf_counter()
        next(self.llm.generate(second, temp=0.0))  # reuses its longest matching prefix
        return time.perf_counter() - started


PATHS: dict[str, Callable[[Path, Path | None, int], BenchPath]] = {
    path.name: path for path in (SeedQuickstart, OurBackend, LlamaCpp)
}
