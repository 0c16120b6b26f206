"""Shared fixtures. Keep each group under its own heading."""

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import platformdirs
import pytest
from filelock import FileLock
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
from tests.clirun import agent_cli

# --- The environment every test (and every `agent` it starts) sees ----------------------------

# No installed package's plugins (tools, hooks): a stray one must not change results. A test
# that wants a package's sets AGENT_LOAD_PLUGINS to its name.
os.environ["AGENT_LOAD_PLUGINS"] = ""
# Ctrl-C as a user's terminal sends it: a shell without job control starts background jobs
# with SIGINT ignored, and every `agent` a test starts would inherit that and never see its
# Ctrl-C. A handler of ours is reset to the default in each child.
signal.signal(signal.SIGINT, signal.default_int_handler)
# Commands run in their own process: a resident service would outlive the test that started
# it. The service's tests (tests/test_service.py) turn it on and stop it themselves.
os.environ["AGENT_SERVICE"] = "off"


@pytest.fixture(params=["off", "auto"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A command's environment running it in its own process, or through the resident service
    (with AGENT_HOME=tmp_path; the service is stopped when the test ends)."""
    env = {"AGENT_SERVICE": request.param}
    yield env
    if request.param != "off":
        agent_cli("service", "stop", home=tmp_path, env=env, timeout=60)


# --- Tiny Qwen3 model and tokenizer (agent.testing) -------------------------------------------


@pytest.fixture(scope="session")
def qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen3 tokenizer rebuilt from Qwen-Agent's BPE ranks, with our chat template."""
    return build_qwen3_tokenizer()


@pytest.fixture(scope="session")
def models_home() -> Path:
    """Where the tiny checkpoints are kept between test runs: `AGENT_TEST_MODELS`, else the
    user's cache directory. Each build is named by the hash of everything it depends on (the
    builder's sources, the library versions), so a change builds anew; a lock keeps
    concurrent sessions from building the same one twice."""
    where = os.environ.get("AGENT_TEST_MODELS") or platformdirs.user_cache_dir("agent-tests")
    home = Path(where)
    home.mkdir(parents=True, exist_ok=True)
    return home


def _cached(models_home: Path, build: Callable[[], Path]) -> Path:
    with FileLock(models_home / "build.lock"), pytest.MonkeyPatch.context() as patch:
        patch.setenv("AGENT_HOME", str(models_home))
        return build()


@pytest.fixture(scope="session")
def tiny_checkpoint(models_home: Path) -> Path:
    """The tiny checkpoint root (`agent.testing.tiny_model`), built once and kept."""
    return _cached(models_home, cached_tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_odd_gptq(models_home: Path) -> Path:
    """A random GPTQ-Int8 checkpoint whose sizes are multiples of nothing the kernels like
    (hidden 136, intermediate 392, attention 4 x 34), quantized one group per channel."""
    return _cached(models_home, cached_odd_checkpoint) / GPTQ_SUBDIR


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
