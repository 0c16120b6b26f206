"""Reading a Qwen3 checkpoint (GPTQ or unquantized) into the tensors our CPU engine runs.

GPTQ weights are unpacked and re-quantized once, at load, to per-output-channel int8 for
`torch.ops.aten._weight_int8pack_mm`: the same arithmetic as GPTQModel's `gptq_torch_int8`
kernel, so both give the same int8 weights and scales. The projections that read the same
input are concatenated (q/k/v, gate/up) so a decode step runs 4 matmuls a layer, not 7.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from agent.engine.kernels.choice import int8pack
from agent.errors import ModelLoadError

GPTQ_PACK_BITS = 32


@dataclass(frozen=True)
class Qwen3Shape:
    """The hyper-parameters of a Qwen3 checkpoint that the forward pass needs."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rms_eps: float
    rope_theta: float
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Qwen3Shape:
        """The shape from a `config.json` of a Qwen3ForCausalLM checkpoint."""
        if "Qwen3ForCausalLM" not in config.get("architectures", ["Qwen3ForCausalLM"]):
            raise ModelLoadError(
                f"the CPU engine runs Qwen3ForCausalLM checkpoints, not {config['architectures']}; "
                "use --engine transformers"
            )
        rope = config.get("rope_parameters") or {}
        heads = int(config["num_attention_heads"])
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads", heads)),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            vocab=int(config["vocab_size"]),
            rms_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", config.get("rope_theta", 1_000_000.0))),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


@dataclass
class Linear:
    """y = x @ W.T: int8 weight [out, in] with one bf16 scale per output, or a bf16 weight."""

    weight: torch.Tensor
    scale: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale is None:
            return torch.nn.functional.linear(x, self.weight)
        return int8pack(x, self.weight, self.scale)

    @property
    def nbytes(self) -> int:
        scale = 0 if self.scale is None else self.scale.nbytes
        return self.weight.nbytes + scale


@dataclass
class LayerWeights:
    """One decoder layer, with q/k/v and gate/up each fused into one matmul."""

    input_norm: torch.Tensor
    qkv: Linear
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear
    down: Linear


@dataclass
class Qwen3Weights:
    """Everything the forward pass reads, plus how it was stored."""

    shape: Qwen3Shape
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: Linear
    quantization: str

    @property
    def linears(self) -> list[Linear]:
        """Every matmul's weights: the layers' in order, then the lm_head."""
        return [
            linear
            for layer in self.layers
            for linear in (layer.qkv, layer.o, layer.gate_up, layer.down)
        ] + [self.lm_head]

    @property
    def nbytes(self) -> int:
        """Bytes of weights read per decoded token (every matmul, not the embedding)."""
        return sum(linear.nbytes for linear in self.linears)


def requantize_int8(weight_nk: torch.Tensor, rows_per_chunk: int = 16_384) -> Linear:
    """Per-output-channel symmetric int8 of a float [out, in] weight, as GPTQModel's int8
    kernel computes it (in float32, chunked over outputs to bound the memory it takes)."""
    weights, scales = [], []
    for chunk in weight_nk.split(rows_per_chunk):
        chunk = chunk.float()
        scale = (chunk.abs().amax(dim=1) / 127.0).clamp_min(1e-10)
        weights.append((chunk / scale.unsqueeze(1)).round().clamp_(-128, 127).to(torch.int8))
        scales.append(scale.to(torch.bfloat16))
    return Linear(torch.cat(weights).contiguous(), torch.cat(scales).contiguous())


def dequantize_gptq(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: torch.Tensor,
    bits: int,
    zero_offset: int,
) -> torch.Tensor:
    """The float32 [in, out] weight of one packed GPTQ linear (`zero_offset` 1 for format v1)."""
    mask = (1 << bits) - 1
    shifts = torch.arange(0, GPTQ_PACK_BITS, bits, dtype=torch.int32)
    values = (qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask  # [in / n, n, out]
    values = values.reshape(-1, qweight.shape[1])
    zeros = (qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask  # [groups, out / n, n]
    zeros = zeros.reshape(qzeros.shape[0], -1) + zero_offset
    groups = g_idx.long()
    # The product in the scales' dtype (fp16), as GPTQModel computes it: the same int8 result.
    return (scales[groups] * (values - zeros[groups]).to(scales.dtype)).float()


class _CheckpointReader:
    """Named tensors from the checkpoint's safetensors files (one or sharded)."""

    def __init__(self, path: Path) -> None:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"no .safetensors weights in {path}")
        self._path = path
        self._where: dict[str, Path] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                self._where.update(dict.fromkeys(handle.keys(), file))

    def has(self, name: str) -> bool:
        return name in self._where

    def mapped_bf16(self, name: str) -> torch.Tensor | None:
        """Tensor `name` mapped from its file, not read, when the file stores it in bf16: its
        pages are read (and count in memory) only where touched, as the rows of the token
        embedding a prompt uses. None when it is stored in another dtype."""
        path = self.where(name)
        with open(path, "rb") as handle:
            header_size = struct.unpack("<Q", handle.read(8))[0]
            entry = json.loads(handle.read(header_size))[name]
        if entry["dtype"] != "BF16":
            return None
        begin, end = entry["data_offsets"]
        if end - begin != 2 * math.prod(entry["shape"]):
            raise ModelLoadError(f"{path}: tensor {name} does not fill its bytes")
        # Copy-on-write, so torch gets a writable array (it is never written).
        rows = np.memmap(path, np.uint16, "c", 8 + header_size + begin, tuple(entry["shape"]))
        return torch.from_numpy(rows).view(torch.bfloat16)

    def where(self, name: str) -> Path:
        """The file holding tensor `name`."""
        if name not in self._where:
            raise ModelLoadError(
                f"the checkpoint in {self._path} has no tensor {name}; is it a Qwen3 checkpoint "
                "whose config.json matches its weights?"
            )
        return self._where[name]

    def get(self, name: str) -> torch.Tensor:
        with safe_open(str(self.where(name)), framework="pt") as handle:
            return handle.get_tensor(name)


class _LinearLoader:
    """Float [in, out] weights of named projections, from GPTQ packs or plain tensors."""

    def __init__(self, reader: _CheckpointReader, quant: dict[str, Any] | None) -> None:
        self._reader = reader
        self.quantized = quant is not None
        if quant is not None:
            if quant.get("quant_method", "gptq") != "gptq" or int(quant["bits"]) not in (2, 4, 8):
                raise ModelLoadError(
                    f"quantization {quant.get('quant_method')} {quant.get('bits')}-bit is not "
                    "supported by the CPU engine; use a GPTQ 2/4/8-bit checkpoint"
                )
            self._bits = int(quant["bits"])
            version = quant.get("checkpoint_format", quant.get("format", "gptq"))
            self._zero_offset = 0 if version == "gptq_v2" else 1

    def weight_kn(self, name: str) -> torch.Tensor:
        if not self.quantized:
            return self._reader.get(f"{name}.weight").float().t()
        get = self._reader.get
        return dequantize_gptq(
            get(f"{name}.qweight"),
            get(f"{name}.qzeros"),
            get(f"{name}.scales"),
            get(f"{name}.g_idx"),
            self._bits,
            self._zero_offset,
        )

    def fused(self, names: list[str]) -> Linear:
        """One matmul for projections of the same input (outputs side by side)."""
        if not self.quantized:
            return Linear(
                torch.cat([self._reader.get(f"{n}.weight") for n in names]).to(torch.bfloat16),
                None,
            )
        parts = [requantize_int8(self.weight_kn(name).t()) for name in names]
        scale = torch.cat([p.scale for p in parts if p.scale is not None])
        return Linear(torch.cat([p.weight for p in parts]), scale)


REPACK_FORMAT = "agent-qwen3-int8-v1"  # bump when the repacked layout or arithmetic changes
_LINEARS = ("qkv", "o", "gate_up", "down")
_NORMS = ("input_norm", "q_norm", "k_norm", "post_norm")


def load_qwen3_weights(
    path: Path, int8_lm_head: bool = True, repack_dir: Path | None = None
) -> Qwen3Weights:
    """Read and repack the checkpoint in `path` for the CPU engine.

    With `repack_dir`, a GPTQ checkpoint's repacked weights are kept there (one file per
    checkpoint version), so later loads read int8 weights instead of re-quantizing.
    """
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    shape = Qwen3Shape.from_config(config)
    quant = config.get("quantization_config")
    reader = _CheckpointReader(path)
    embed_name = "model.embed_tokens.weight"
    embed = reader.mapped_bf16(embed_name)
    if embed is None:
        embed = reader.get(embed_name).to(torch.bfloat16)
    quantization = f"gptq int{quant['bits']}" if quant else "none"
    cached = None
    if repack_dir is not None and quant is not None:
        cached = repack_dir / f"{checkpoint_key(path, int8_lm_head)}.safetensors"
        if cached.is_file():
            # Copied out of the file's memory map: the int8 kernel crashed (SIGSEGV) on a
            # mapped tensor at an offset that was not aligned for it.
            tensors = {k: v.clone() for k, v in load_file(str(cached)).items()}
            return _from_tensors(shape, embed, tensors, quantization)
    weights = _repack(shape, reader, _LinearLoader(reader, quant), embed, int8_lm_head)
    weights.quantization = quantization
    if cached is not None:
        _save_atomically(_to_tensors(weights), cached)
    return weights


def _repack(
    shape: Qwen3Shape,
    reader: _CheckpointReader,
    linears: _LinearLoader,
    embed: torch.Tensor,
    int8_lm_head: bool,
) -> Qwen3Weights:
    def norm(name: str) -> torch.Tensor:
        return reader.get(name).to(torch.bfloat16)

    layers = []
    for i in range(shape.layers):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        layers.append(
            LayerWeights(
                input_norm=norm(f"model.layers.{i}.input_layernorm.weight"),
                qkv=linears.fused([f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"]),
                q_norm=norm(f"{attn}.q_norm.weight"),
                k_norm=norm(f"{attn}.k_norm.weight"),
                o=linears.fused([f"{attn}.o_proj"]),
                post_norm=norm(f"model.layers.{i}.post_attention_layernorm.weight"),
                gate_up=linears.fused([f"{mlp}.gate_proj", f"{mlp}.up_proj"]),
                down=linears.fused([f"{mlp}.down_proj"]),
            )
        )
    head = embed if shape.tied_embeddings or not reader.has("lm_head.weight") else None
    head = reader.get("lm_head.weight").to(torch.bfloat16) if head is None else head
    lm_head = requantize_int8(head) if int8_lm_head else Linear(head, None)
    return Qwen3Weights(shape, embed, layers, norm("model.norm.weight"), lm_head, "")


def checkpoint_key(path: Path, int8_lm_head: bool) -> str:
    """Changes when the checkpoint's files, the repack format or the lm_head choice change."""
    digest = hashlib.sha256(f"{REPACK_FORMAT}\n{path.resolve()}\n{int8_lm_head}\n".encode())
    for file in sorted([*path.glob("*.safetensors"), path / "config.json"]):
        stat = file.stat()
        digest.update(f"{file.name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _to_tensors(weights: Qwen3Weights) -> dict[str, torch.Tensor]:
    tensors = {"norm": weights.norm}
    named = [("lm_head", weights.lm_head)]
    for i, layer in enumerate(weights.layers):
        tensors.update({f"{i}.{name}": getattr(layer, name) for name in _NORMS})
        named.extend((f"{i}.{name}", getattr(layer, name)) for name in _LINEARS)
    for name, linear in named:
        tensors[f"{name}.weight"] = linear.weight
        if linear.scale is not None:
            tensors[f"{name}.scale"] = linear.scale
    return tensors


def _from_tensors(
    shape: Qwen3Shape, embed: torch.Tensor, tensors: dict[str, torch.Tensor], quantization: str
) -> Qwen3Weights:
    def linear(name: str) -> Linear:
        return Linear(tensors[f"{name}.weight"], tensors.get(f"{name}.scale"))

    layers = [
        LayerWeights(
            input_norm=tensors[f"{i}.input_norm"],
            qkv=linear(f"{i}.qkv"),
            q_norm=tensors[f"{i}.q_norm"],
            k_norm=tensors[f"{i}.k_norm"],
            o=linear(f"{i}.o"),
            post_norm=tensors[f"{i}.post_norm"],
            gate_up=linear(f"{i}.gate_up"),
            down=linear(f"{i}.down"),
        )
        for i in range(shape.layers)
    ]
    return Qwen3Weights(shape, embed, layers, tensors["norm"], linear("lm_head"), quantization)


def _save_atomically(tensors: dict[str, torch.Tensor], target: Path) -> None:
    """Write to a scratch file beside `target` and rename it: never a half-written cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(scratch))
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
