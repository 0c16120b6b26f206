"""Shared fixtures. Keep each group under its own heading."""

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from agent.testing.tiny_model import (
    FLOAT_SUBDIR,
    GPTQ_SUBDIR,
    TRAINED_FLOAT_SUBDIR,
    TRAINED_GPTQ_SUBDIR,
    cached_odd_checkpoint,
    cached_tiny_checkpoint,
)
from agent.testing.tokenizer import build_qwen3_tokenizer

# --- Tiny Qwen3 model and tokenizer (agent.testing) -------------------------------------------


@pytest.fixture(scope="session")
def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen3 tokenizer rebuilt from Qwen-Agent's BPE ranks, with our chat template."""
    return build_qwen3_tokenizer()


@pytest.fixture(scope="session")
def models_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The throwaway AGENT_HOME the session's tiny checkpoints are built in."""
    return tmp_path_factory.mktemp("agent-home")


@pytest.fixture(scope="session")
def tiny_checkpoint(models_home: Path) -> Path:
    """The tiny checkpoint root, built once per session under a throwaway AGENT_HOME."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGENT_HOME", str(models_home))
        return cached_tiny_checkpoint()


@pytest.fixture(scope="session")
def tiny_odd_gptq(models_home: Path) -> Path:
    """A random GPTQ-Int8 checkpoint whose sizes are multiples of nothing the kernels like
    (hidden 136, intermediate 392, attention 4 x 34), quantized one group per channel."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGENT_HOME", str(models_home))
        return cached_odd_checkpoint() / GPTQ_SUBDIR


@pytest.fixture(scope="session")
def tiny_gptq(tiny_checkpoint: Path) -> Path:
    """The GPTQ-Int8 tiny checkpoint, laid out like `Qwen/Qwen3-0.6B-GPTQ-Int8`."""
    return tiny_checkpoint / GPTQ_SUBDIR


@pytest.fixture(scope="session")
def tiny_float(tiny_checkpoint: Path) -> Path:
    """The same tiny model before quantization (bf16)."""
    return tiny_checkpoint / FLOAT_SUBDIR


@pytest.fixture(scope="session")
def tiny_trained_gptq(tiny_checkpoint: Path) -> Path:
    """The tiny model trained on scripted agent runs, GPTQ-Int8 like the official model."""
    return tiny_checkpoint / TRAINED_GPTQ_SUBDIR


@pytest.fixture(scope="session")
def tiny_trained_float(tiny_checkpoint: Path) -> Path:
    """The trained tiny model before quantization (bf16)."""
    return tiny_checkpoint / TRAINED_FLOAT_SUBDIR
