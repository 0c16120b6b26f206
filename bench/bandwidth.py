"""Memory bandwidth, measured in the run that uses it: the copy bound and the read bound.

A copy counts bytes read plus bytes written; decode only reads (the weights once a token), and
on some of our machines a reader gets far less than a copy suggests (AVX2-only EPYC: copy 25.5
GB/s, read loops 10-20). The read is measured with the decode kernel's access pattern: every
thread reads one contiguous share of a buffer far larger than the caches, front to back, as the
int8 matmul's threads each read their rows of a weight matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch

from agent.engine.kernels.choice import best_seconds

BUFFER_MB = 512
REPEATS = 5


def _with_threads(threads: int, measure: Callable[[], float]) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return measure()
    finally:
        torch.set_num_threads(previous)


def copy_bandwidth_gb_s(threads: int, megabytes: int = BUFFER_MB) -> float:
    """Bytes read plus bytes written per second copying a buffer far larger than the caches."""

    def measure() -> float:
        source = torch.ones(megabytes << 20, dtype=torch.uint8)
        target = torch.empty_like(source)
        return 2 * source.nbytes / best_seconds(lambda: target.copy_(source), REPEATS) / 1e9

    return _with_threads(threads, measure)


def read_bandwidth_gb_s(threads: int, megabytes: int = BUFFER_MB) -> float:
    """Bytes read per second by `threads` threads summing their contiguous shares of a buffer
    far larger than the caches (float32 adds: the reading, not the arithmetic, is the cost)."""

    def measure() -> float:
        source = torch.ones((megabytes << 20) // 4, dtype=torch.float32)
        return source.nbytes / best_seconds(source.sum, REPEATS) / 1e9

    return _with_threads(threads, measure)
