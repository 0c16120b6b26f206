"""The tiny Qwen3 checkpoint: laid out like Qwen3-0.6B-GPTQ-Int8, loads and generates on CPU."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPTQConfig, PreTrainedTokenizerFast

from agent.testing.tiny_model import (
    FLOAT_SUBDIR,
    GPTQ_SUBDIR,
    ROPE_THETA,
    TRAINED_FLOAT_SUBDIR,
    TRAINED_GPTQ_SUBDIR,
    cached_tiny_checkpoint,
    checkpoint_version,
    main,
)

pytestmark = pytest.mark.slow

FILES = {"config.json", "generation_config.json", "model.safetensors"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def quantized(tiny_gptq: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(
        tiny_gptq,
        quantization_config=GPTQConfig(bits=8, backend="gptq_torch_int8"),
        dtype=torch.bfloat16,
        device_map="cpu",
    )


@pytest.fixture(scope="module")
def prompt_ids(qwen3_tokenizer: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    prompt = qwen3_tokenizer.apply_chat_template(
        [{"role": "user", "content": "What time is it?"}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    return dict(qwen3_tokenizer(prompt, return_tensors="pt"))


def test_files_are_laid_out_like_the_hub_checkpoint(tiny_checkpoint: Path) -> None:
    assert tiny_checkpoint.name == f"tiny-model-{checkpoint_version()}"
    for subdir in (FLOAT_SUBDIR, TRAINED_FLOAT_SUBDIR):
        assert {p.name for p in (tiny_checkpoint / subdir).iterdir()} == FILES | TOKENIZER_FILES
    expected = FILES | TOKENIZER_FILES | {"quantize_config.json"}
    for subdir in (GPTQ_SUBDIR, TRAINED_GPTQ_SUBDIR):
        assert {p.name for p in (tiny_checkpoint / subdir).iterdir()} == expected


ALL_SUBDIRS = [FLOAT_SUBDIR, GPTQ_SUBDIR, TRAINED_FLOAT_SUBDIR, TRAINED_GPTQ_SUBDIR]


@pytest.mark.parametrize("subdir", ALL_SUBDIRS)
def test_config_matches_qwen3_shape(tiny_checkpoint: Path, subdir: str) -> None:
    config = read_json(tiny_checkpoint / subdir / "config.json")
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["model_type"] == "qwen3"
    assert config["vocab_size"] == 151936 and config["tie_word_embeddings"] is True
    assert config["max_position_embeddings"] == 32768 and config["head_dim"] == 32
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == ROPE_THETA
    generation = read_json(tiny_checkpoint / subdir / "generation_config.json")
    assert generation["eos_token_id"] == [151645, 151643]
    tokenizer_config = read_json(tiny_checkpoint / subdir / "tokenizer_config.json")
    assert tokenizer_config["tokenizer_class"] == "Qwen2Tokenizer"
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert "<think>" in tokenizer_config["chat_template"]


@pytest.mark.parametrize("subdir", [GPTQ_SUBDIR, TRAINED_GPTQ_SUBDIR])
def test_quantization_config_matches_the_official_format(
    tiny_checkpoint: Path, subdir: str
) -> None:
    in_config = read_json(tiny_checkpoint / subdir / "config.json")["quantization_config"]
    quantize_config = read_json(tiny_checkpoint / subdir / "quantize_config.json")
    for config in (in_config, quantize_config):
        assert config["quant_method"] == "gptq" and config["checkpoint_format"] == "gptq"
        assert (config["bits"], config["group_size"]) == (8, 128)
        assert (config["sym"], config["desc_act"], config["lm_head"]) == (True, False, False)


@pytest.mark.parametrize("subdir", [GPTQ_SUBDIR, TRAINED_GPTQ_SUBDIR])
def test_embeddings_and_lm_head_stay_unquantized(tiny_checkpoint: Path, subdir: str) -> None:
    from safetensors import safe_open

    with safe_open(tiny_checkpoint / subdir / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
        assert weights.get_slice("model.embed_tokens.weight").get_dtype() == "BF16"
    assert not any(name.startswith("lm_head") for name in names)  # tied to the embeddings
    assert "model.layers.0.mlp.down_proj.qweight" in names
    assert not any("embed_tokens.q" in name for name in names)


def test_saved_tokenizer_loads_like_the_hub_one(
    tiny_gptq: Path, qwen3_tokenizer: PreTrainedTokenizerFast
) -> None:
    loaded = AutoTokenizer.from_pretrained(tiny_gptq)
    text = "<|im_start|>user\n你好, tools: <tool_call>{}</tool_call> 😀<|im_end|>\n"
    assert loaded.encode(text) == qwen3_tokenizer.encode(text)
    assert loaded.chat_template == qwen3_tokenizer.chat_template
    assert (loaded.eos_token_id, loaded.pad_token_id) == (151645, 151643)


def test_quantized_model_loads_with_the_int8_kernel_and_generates(
    quantized: torch.nn.Module, prompt_ids: dict[str, torch.Tensor]
) -> None:
    kernels = {type(m).__name__ for name, m in quantized.named_modules() if name.endswith("_proj")}
    assert kernels == {"TorchInt8Linear"}
    output = quantized.generate(**prompt_ids, max_new_tokens=8, do_sample=False)
    assert output.shape[1] == prompt_ids["input_ids"].shape[1] + 8


def test_quantized_logits_stay_close_to_float(
    quantized: torch.nn.Module, tiny_float: Path, prompt_ids: dict[str, torch.Tensor]
) -> None:
    reference = AutoModelForCausalLM.from_pretrained(tiny_float, dtype=torch.float32)
    with torch.no_grad():
        expected = reference(**prompt_ids).logits
        actual = quantized(**prompt_ids).logits.float()
    assert (actual - expected).norm() / expected.norm() < 0.03


def test_cache_is_reused(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_HOME", str(tiny_checkpoint.parent.parent))
    assert cached_tiny_checkpoint() == tiny_checkpoint


def test_cli_builds_a_float_checkpoint_deterministically(tiny_float: Path, tmp_path: Path) -> None:
    assert main(["build", str(tmp_path), "--no-quantize", "--no-trained"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {FLOAT_SUBDIR}
    for name in FILES | TOKENIZER_FILES:
        assert (tmp_path / FLOAT_SUBDIR / name).read_bytes() == (tiny_float / name).read_bytes()
