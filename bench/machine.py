"""The machine a benchmark ran on, written beside its figures: machines differ between runs."""

from __future__ import annotations

import os
from typing import Any

import torch

from agent.engine.kernels.machine import machine_identity

# The CPU features the kernels choose by (agent/engine/kernels/choice.py, int8_gemm.c).
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_features() -> dict[str, Any]:
    """The CPU's name, its features that decide the kernels, and torch's capability."""
    identity = machine_identity()
    name = next((line.split(":", 1)[1].strip() for line in identity.splitlines()
                 if line.startswith("model name")), "unknown")  # fmt: skip
    flags = set(identity.split())
    return {"cpu": name, "cores": os.cpu_count(),
            "features": [flag for flag in FEATURES if flag in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip
