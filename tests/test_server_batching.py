"""Batched decoding: one forward pass for several sequences gives each exactly the logits it
gets alone, and concurrent requests through the batcher generate what they would alone, their
drafted tokens verified in the shared passes."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agent.engine.generate import Usage, generate_token_ids
from agent.engine.kernels.choice import COMPILED, KernelChoice
from agent.engine.loading import load_local_model
from agent.engine.model import CpuQwen3
from agent.engine.sampling import SamplingParams
from agent.server.batching import DecodeBatcher

pytestmark = pytest.mark.slow
GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0)


def test_a_batched_step_gives_each_sequence_its_own_logits(tiny_trained_gptq: Path) -> None:
    engine = load_local_model(str(tiny_trained_gptq)).engine
    prompts = [[100, 200, 300, 400], [5, 6, 7], [100, 200, 301, 9, 10, 11]]
    batched, alone = (
        [engine.new_cache(64) for _ in prompts],
        [engine.new_cache(64) for _ in prompts],
    )
    for prompt, first, second in zip(prompts, batched, alone, strict=True):
        engine.forward(prompt, first)
        engine.forward(prompt, second)
    for step in ([11, 22, 33], [1, 2, 3]):
        together = engine.forward_batch(step, batched)
        apart = torch.stack([engine.forward([t], c) for t, c in zip(step, alone, strict=True)])
        assert torch.equal(together, apart)
    assert [c.tokens for c in batched] == [c.tokens for c in alone]


@pytest.mark.parametrize("fused", [False, True], ids=["torch batch", "fused batch"])
def test_concurrent_generations_through_the_batcher_match_each_alone(
    tiny_trained_gptq: Path, fused: bool
) -> None:
    loaded = load_local_model(str(tiny_trained_gptq))
    choice = KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled")
    engine = CpuQwen3(loaded.engine.weights, 0, kernels=choice if fused else KernelChoice())
    assert (engine.fused_decode is not None) == fused
    loaded = replace(loaded, engine=engine)
    prompts = [[151644, 872, 198, 9707 + n, 151645, 198, 151644, 77091, 198] for n in range(4)]

    usages: list[Usage] = []

    def generate(model, prompt):  # type: ignore[no-untyped-def]
        usages.append(Usage())  # lookup decoding on, as agent serve runs it
        return list(generate_token_ids(model, prompt, GREEDY, 24, 0, usages[-1]))

    alone = [generate(loaded, prompt) for prompt in prompts]
    usages.clear()
    batcher = DecodeBatcher(loaded.engine, wait_s=0.05)
    shared = replace(loaded, engine=batcher)
    together: dict[int, list[int]] = {}
    threads = [
        threading.Thread(target=lambda n=n: together.__setitem__(n, generate(shared, prompts[n])))
        for n in range(len(prompts))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [together[n] for n in range(len(prompts))] == alone
    assert batcher.batches < batcher.batched_steps  # several sequences shared passes
    verifications = sum(usage.verifications for usage in usages)
    # Drafts are verified where the engine verifies exactly (the fused step), in the batches.
    assert verifications == batcher.batched_verifications
    assert (verifications > 0) == fused
