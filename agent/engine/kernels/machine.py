"""What a kernel measured or built on one machine depends on: the CPU, the torch build, the
thread count. Both the kernel choice and the compiled kernels are keyed by it."""

from __future__ import annotations

import platform

import torch


def machine_identity() -> str:
    """What a measured choice depends on besides the model: CPU, torch build, threads."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "flags", "Features")):
                    flags += line
                if line.strip() == "":  # the first processor's block is enough
                    break
    except OSError:
        flags = platform.processor()
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"{platform.machine()}\n{flags}{capability}\n{torch.__version__}\n{torch.get_num_threads()}"
    )
