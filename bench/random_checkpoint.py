"""Qwen3-0.6B's full-size architecture with random weights, in the exact GPTQ-Int8 checkpoint
format of `Qwen/Qwen3-0.6B-GPTQ-Int8` (8-bit, group 128, symmetric, format v1, bf16 embedding
tied to the lm_head), written directly: no quantization pass, a few seconds to build."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen3Config

from agent.paths import cache_dir
from agent.testing.tiny_model import (
    GPTQ_BITS,
    GPTQ_GROUP_SIZE,
    finish_checkpoint,
    qwen3_config,
    tiny_config,
)
from agent.testing.tokenizer import build_qwen3_tokenizer

SYM_ZERO_V1 = 0x7F7F7F7F  # four 8-bit zero points of 128, stored minus one (GPTQ format v1)
WEIGHT_STD = 0.02
PROJECTIONS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


def full_size_config() -> Qwen3Config:
    """Qwen3-0.6B's published architecture."""
    return qwen3_config(
        hidden=1024,
        intermediate=3072,
        layers=28,
        heads=16,
        kv_heads=8,
        head_dim=128,
        rope_theta=1_000_000.0,
        max_positions=40960,
    )


def _packed_linear(in_features: int, out_features: int, gen: torch.Generator) -> dict:
    """Random 8-bit GPTQ tensors: every weight uniform in [-128, 127] x its group's scale."""
    groups = in_features // GPTQ_GROUP_SIZE
    words = torch.randint(-(2**31), 2**31 - 1, (in_features // 4, out_features), generator=gen)
    spread = torch.rand(groups, out_features, generator=gen) + 0.5
    scales = (spread * WEIGHT_STD / 74.0).to(torch.float16)  # uniform ints have std ~74
    return {
        "qweight": words.to(torch.int32),
        "qzeros": torch.full((groups, out_features // 4), SYM_ZERO_V1, dtype=torch.int32),
        "scales": scales,
        "g_idx": (torch.arange(in_features) // GPTQ_GROUP_SIZE).to(torch.int32),
    }


def random_gptq_tensors(config: Qwen3Config, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, named as Qwen3ForCausalLM names them."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config.hidden_size, config.intermediate_size
    head_dim = int(config.head_dim or 0) or hidden // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = int(config.num_key_value_heads or config.num_attention_heads) * head_dim
    shapes = {
        "q_proj": (hidden, q_out),
        "k_proj": (hidden, kv_out),
        "v_proj": (hidden, kv_out),
        "o_proj": (q_out, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    embed = torch.randn(config.vocab_size, hidden, generator=gen) * WEIGHT_STD
    tensors = {"model.embed_tokens.weight": embed.to(torch.bfloat16)}
    tensors["model.norm.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"{prefix}.{norm}.weight"] = torch.ones(hidden, dtype=torch.bfloat16)
        for norm in ("q_norm", "k_norm"):
            tensors[f"{prefix}.self_attn.{norm}.weight"] = torch.ones(
                head_dim, dtype=torch.bfloat16
            )
        for block, names in PROJECTIONS.items():
            for name in names:
                packed = _packed_linear(*shapes[name], gen)
                for key, value in packed.items():
                    tensors[f"{prefix}.{block}.{name}.{key}"] = value
    return tensors


def write_random_gptq_checkpoint(out_dir: Path, config: Qwen3Config, seed: int = 0) -> Path:
    """Write config, weights, tokenizer and generation config into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(random_gptq_tensors(config, seed), str(out_dir / "model.safetensors"))
    config_dict = config.to_dict()
    config_dict["architectures"] = ["Qwen3ForCausalLM"]
    config_dict["quantization_config"] = {
        "bits": GPTQ_BITS,
        "group_size": GPTQ_GROUP_SIZE,
        "desc_act": False,
        "sym": True,
        "lm_head": False,
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "format": "gptq",
        "pack_dtype": "int32",
    }
    (out_dir / "config.json").write_text(json.dumps(config_dict, indent=2) + "\n")
    finish_checkpoint(out_dir, build_qwen3_tokenizer())
    return out_dir


def cached_checkpoint(size: str) -> Path:
    """The `full` or `tiny` random GPTQ checkpoint in the app's cache, written on first use
    (to a scratch directory renamed into place, so a half-written one is never used)."""
    config = full_size_config() if size == "full" else tiny_config()
    target = cache_dir() / "bench" / f"qwen3-{size}-random-gptq-int8-v1"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as scratch:
        built = write_random_gptq_checkpoint(Path(scratch) / "checkpoint", config)
        built.rename(target)
    return target
