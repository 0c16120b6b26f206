"""The trainer of the tiny model: exactly Qwen3's forward pass and softmax, deterministic."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from agent.testing.tiny_model import TRAINED_WEIGHTS, random_model
from agent.testing.training import TinyQwen3Trainer, train, training_data
from agent.testing.transcripts import Example, value_token_ids


@pytest.fixture(scope="module")
def examples(qwen3_tokenizer: PreTrainedTokenizerFast) -> list[Example]:
    data = training_data(qwen3_tokenizer, count=6, seed=5)
    return [ex for group in data.full.values() for ex in group]


def trainer_for(examples: list[Example]) -> TinyQwen3Trainer:
    used = {t for ex in examples for t in ex.prompt + ex.target}
    return TinyQwen3Trainer(random_model(0).float(), sorted(used))


def test_loss_is_the_full_models_cross_entropy(examples: list[Example]) -> None:
    """Shared-prefix batching and the used-rows softmax change nothing: the loss equals the
    cross-entropy of the exported Qwen3ForCausalLM over the whole vocabulary, row by row."""
    same_prompt = [ex for ex in examples if ex.prompt[:200] == examples[0].prompt[:200]][:3]
    trainer = trainer_for(examples)
    with torch.no_grad():
        loss, _ = trainer.batch_loss(same_prompt)
        model = trainer.export(random_model(1).float())
        losses = []
        for ex in same_prompt:
            logits = model(input_ids=torch.tensor([ex.prompt + ex.target])).logits[0]
            predicting = logits[len(ex.prompt) - 1 : -1]
            losses.append(F.cross_entropy(predicting, torch.tensor(ex.target), reduction="none"))
    assert torch.allclose(loss, torch.cat(losses).mean(), rtol=1e-4)


def test_exported_model_keeps_unused_rows_at_zero(examples: list[Example]) -> None:
    trainer = trainer_for(examples)
    model = trainer.export(random_model(1))
    embed = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == embed.data_ptr()
    nonzero = embed.detach().float().abs().sum(-1).nonzero().flatten()
    assert set(nonzero.tolist()) == set(trainer.used.tolist())


def test_training_is_deterministic(examples: list[Example]) -> None:
    def trained() -> dict[str, torch.Tensor]:
        trainer = trainer_for(examples)
        train(trainer, lambda rng: rng.sample(examples, 2), steps=3, seed=7)
        return trainer.params

    first, second = trained(), trained()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(
        first["model.norm.weight"], trainer_for(examples).params["model.norm.weight"]
    )


def test_a_few_steps_lower_the_loss(examples: list[Example]) -> None:
    trainer = trainer_for(examples)
    batch = examples[:2]
    with torch.no_grad():
        before = trainer.batch_loss(batch)[0].item()
    train(trainer, lambda rng: batch, steps=10, seed=0)
    with torch.no_grad():
        after, exact = trainer.batch_loss(batch)
    assert after.item() < 0.75 * before
    assert len(exact) == 2


def test_saved_weights_load_back(examples: list[Example], tmp_path: Path) -> None:
    trainer = trainer_for(examples)
    trainer.save(tmp_path / "weights.safetensors")
    loaded = TinyQwen3Trainer.load(random_model(3), tmp_path / "weights.safetensors")
    assert torch.equal(loaded.used, trainer.used)
    for name, value in trainer.params.items():
        assert torch.equal(loaded.params[name], value.to(torch.bfloat16).float())
    assert (tmp_path / "weights.safetensors").stat().st_size < 2_000_000


def test_committed_weights_know_every_token_the_tasks_use(
    qwen3_tokenizer: PreTrainedTokenizerFast, examples: list[Example]
) -> None:
    """The committed weights were trained on today's transcripts and values (else retrain:
    `python -m agent.testing.tiny_model train`)."""
    trained = TinyQwen3Trainer.load(random_model(0), TRAINED_WEIGHTS)
    needed = value_token_ids(qwen3_tokenizer) | {
        t for ex in examples for t in ex.prompt + ex.target
    }
    assert needed <= set(trained.used.tolist())
