"""Checks of a model directory before loading it: each problem is one line saying what to fix.

A directory can be wrong in many ways that the loaders report as tracebacks deep inside
transformers or safetensors: config.json that is not JSON, a checkpoint of another
architecture, a quantization we do not run, weights missing or cut short. `check_model_dir`
finds these first.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from agent.errors import ModelLoadError

SUPPORTED_MODEL_TYPES = ("qwen3",)
SUPPORTED_GPTQ_BITS = (2, 4, 8)
_HOW = "re-download the model (`hf download REPO --local-dir DIR`) or pass another --model"


def read_config(path: Path) -> dict[str, Any]:
    """`path/config.json` as a dict."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}/config.json cannot be read ({exc}); {_HOW}") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}/config.json is not valid JSON ({exc}); {_HOW}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}/config.json is not a JSON object; {_HOW}")
    return config


def quantization_config(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The GPTQ settings of a checkpoint (config.json's, else quantize_config.json), or None."""
    quant = config.get("quantization_config")
    if quant is None and (path / "quantize_config.json").is_file():
        try:
            quant = json.loads((path / "quantize_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}/quantize_config.json is not valid JSON ({exc})") from None
    if quant is not None and not isinstance(quant, dict):
        raise ModelLoadError(f"{path}: quantization_config is not a JSON object; {_HOW}")
    return quant


def check_model_dir(path: Path) -> None:
    """Raise `ModelLoadError` for the first reason `path` cannot be loaded as a Qwen3 model."""
    config = read_config(path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"{path} holds a {model_type or 'model of unknown type'!s} checkpoint; agent runs "
            "Qwen3 models (model_type qwen3), such as Qwen/Qwen3-0.6B-GPTQ-Int8"
        )
    quant = quantization_config(path, config)
    if quant is not None:
        _check_gptq(path, config, quant)
    _check_weights(path)


def _check_gptq(path: Path, config: dict[str, Any], quant: dict[str, Any]) -> None:
    method = quant.get("quant_method", "gptq")
    if method != "gptq":
        raise ModelLoadError(f"{path}: quantization {method!r} is not supported; use a GPTQ one")
    bits, group = quant.get("bits"), quant.get("group_size", -1)
    if bits not in SUPPORTED_GPTQ_BITS:
        supported = ", ".join(map(str, SUPPORTED_GPTQ_BITS))
        raise ModelLoadError(f"{path}: GPTQ with {bits} bits is not supported ({supported} are)")
    sizes = [config.get("hidden_size"), config.get("intermediate_size")]
    if not isinstance(group, int) or not (
        group == -1 or (group > 0 and all(isinstance(n, int) and n % group == 0 for n in sizes))
    ):
        raise ModelLoadError(
            f"{path}: GPTQ group size {group!r} is not supported (-1, or a size that divides "
            f"the hidden size {sizes[0]} and the intermediate size {sizes[1]})"
        )


def _check_weights(path: Path) -> None:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(
                set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{index} is not a valid weights index ({exc}); {_HOW}") from None
    else:
        shards = sorted(file.name for file in path.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError(f"{path} has no weights (model.safetensors); {_HOW}")
    for name in shards:
        _check_safetensors(path / name)


def _check_safetensors(file: Path) -> None:
    """The file exists, its header parses, and it is as long as the header says."""
    problem = _safetensors_problem(file)
    if problem:
        raise ModelLoadError(f"{file} {problem}; {_HOW}")


def _safetensors_problem(file: Path) -> str:
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return "is cut short (no header)"
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                return "is cut short (its header is incomplete)"
            header = json.loads(handle.read(length))
    except FileNotFoundError:
        return "is missing"
    except OSError as exc:
        return f"cannot be read ({exc})"
    except (ValueError, UnicodeDecodeError):
        return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file"
    ends = [
        info["data_offsets"][1]
        for key, info in header.items()
        if key != "__metadata__" and isinstance(info, dict) and "data_offsets" in info
    ]
    if 8 + length + max(ends, default=0) > size:
        return "is cut short (truncated download?)"
    return ""
