"""Next-token choice: presets, filters and the presence penalty."""

import torch

from agent.config import Settings
from agent.engine.sampling import SamplingParams, sample_next_token

NO_SEEN = torch.zeros(8, dtype=torch.bool)


def pick(logits: list[float], params: SamplingParams, seen=NO_SEEN, seed: int = 0) -> int:
    return sample_next_token(
        torch.tensor(logits), params, seen, torch.Generator().manual_seed(seed)
    )


def test_mode_presets_and_overrides() -> None:
    thinking = Settings(thinking=True).sampling()
    assert (thinking.temperature, thinking.top_p, thinking.top_k, thinking.min_p) == (
        0.6,
        0.95,
        20,
        0.0,
    )
    plain = Settings(thinking=False).sampling()
    assert (plain.temperature, plain.top_p, plain.top_k, plain.min_p) == (0.7, 0.8, 20, 0.0)
    assert Settings(thinking=True, top_k=5).sampling().top_k == 5


def test_top_k_one_is_the_most_likely_token() -> None:
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=1, min_p=0.0)
    logits = [0.0, 3.0, 1.0, 2.9, 0.0, 0.0, 0.0, 0.0]
    assert {pick(logits, params, seed=s) for s in range(20)} == {1}


def test_min_p_and_top_p_drop_unlikely_tokens() -> None:
    logits = [5.0, 4.9, -5.0, -5.0, -5.0, -5.0, -5.0, -5.0]
    min_p = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.5)
    assert {pick(logits, min_p, seed=s) for s in range(50)} == {0, 1}
    top_p = SamplingParams(temperature=1.0, top_p=0.4, top_k=0, min_p=0.0)
    assert {pick(logits, top_p, seed=s) for s in range(50)} == {0}


def test_sampling_is_reproducible_with_a_seed_and_varies_without() -> None:
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.0)
    logits = [1.0] * 8
    assert [pick(logits, params, seed=3) for _ in range(5)] == [pick(logits, params, seed=3)] * 5
    assert len({pick(logits, params, seed=s) for s in range(40)}) > 1


def test_presence_penalty_moves_away_from_tokens_already_generated() -> None:
    greedy = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, presence_penalty=1.5)
    logits = [0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    seen = torch.zeros(8, dtype=torch.bool)
    assert pick(logits, greedy, seen) == 1
    seen[1] = True
    assert pick(logits, greedy, seen) == 2


def test_frequency_penalty_grows_with_each_repeat() -> None:
    greedy = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, frequency_penalty=1.0)
    logits = [0.0, 5.0, 3.5, 0.0]
    counts = torch.zeros(4)
    counts[1] = 1  # once: 5 - 1 = 4 still beats 3.5
    assert pick(logits, greedy, counts) == 1
    counts[1] = 2  # twice: 5 - 2 = 3 loses to 3.5
    assert pick(logits, greedy, counts) == 2
    presence = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, presence_penalty=1.0)
    assert pick(logits, presence, counts) == 1  # presence counts a token once, however often


def test_the_settings_sampling_reaches_the_local_backend_as_one_typed_value() -> None:
    from agent.loop.assistant import llm_config

    config = llm_config(Settings(thinking=True, temperature=0.3, presence_penalty=1.5))
    assert config["sampling"] == SamplingParams(0.3, 0.95, 20, 0.0, presence_penalty=1.5)
    assert not {"temperature", "top_p", "presence_penalty"} & set(config["generate_cfg"])
