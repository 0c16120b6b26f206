"""Prefill's int8 x int8 kernel (agent/engine/kernels/int8_gemm.c) on every instruction path
this CPU runs (the test ids name them): within the error its quantized activations allow of
the exact product, on the model's shapes and odd ones, and the same bits on every path."""

from collections.abc import Iterator

import pytest
import torch

from agent.engine.kernels.choice import INT8_X_INT8, available_prefill_kernels
from agent.engine.kernels.int8_gemm import QBLOCK, int8_matmul, runnable_paths
from tests.child_process import ChildRunner

PATHS_HERE = runnable_paths()
# (outputs, inputs): Qwen3-0.6B's q/k/v, o, gate/up and down; input sizes with a tail past a
# multiple of 64 or 16; the odd checkpoint's 136 and 392; fewer outputs than a tile's 4.
SHAPES = [
    (4096, 1024),
    (1024, 2048),
    (6144, 1024),
    (1024, 3072),
    (1100, 96),
    (300, 1064),
    (392, 136),
    (136, 392),
    (257, 100),
    (33, 1025),
    (3, 70),
]
ROWS = [1, 3, 4, 15, 17]


def case(out: int, inputs: int, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(out * inputs + rows)
    weight = torch.randint(-128, 128, (out, inputs), dtype=torch.int8, generator=generator)
    scale = (torch.rand(out, generator=generator) / 50 + 1e-3).to(torch.bfloat16)
    x = (torch.randn(rows, inputs, generator=generator) * 3).to(torch.bfloat16)
    # An outlier, as Qwen3's massive activations: it coarsens its own block's scale only,
    # and the bound below, taken block by block, holds the others to their own scales.
    x[0, inputs // 2] = 1000.0
    return x, weight, scale


def beyond_bound(out: int, inputs: int, rows: int, path: str) -> tuple[tuple, str, float]:
    """(Run in a child.) The output's shape and dtype, and its largest error as a fraction of
    what int8 activations allow: each input off by at most max|x| / 254 over its block of
    QBLOCK inputs (half a step of the block's scale), so an output by the sum over blocks of
    that times sum|w| * scale over the block, then rounded to bf16."""
    x, weight, scale = case(out, inputs, rows)
    output = int8_matmul(x, weight, scale, path)
    w = weight.double() * scale.double().unsqueeze(1)
    exact = x.double() @ w.t()
    quantized = torch.zeros_like(exact)
    for first in range(0, inputs, QBLOCK):
        block = slice(first, first + QBLOCK)
        step = x[:, block].double().abs().amax(dim=1, keepdim=True) / 254
        quantized += step @ w[:, block].abs().sum(1, keepdim=True).t()
    allowed = quantized + 2**-8 * (exact.abs() + quantized) + 1e-30
    error = (output.double() - exact).abs() * (1 - 1e-5)
    return tuple(output.shape), str(output.dtype), float((error / allowed).max())


def bits_on_every_path(out: int, inputs: int, rows: int) -> list[bool]:
    """(Run in a child.) Whether each path's output is the first path's, bit for bit."""
    x, weight, scale = case(out, inputs, rows)
    outputs = [int8_matmul(x, weight, scale, path) for path in PATHS_HERE]
    return [torch.equal(outputs[0], output) for output in outputs]


@pytest.fixture(scope="module")
def child() -> Iterator[ChildRunner]:
    runner = ChildRunner()
    yield runner
    runner.close()


@pytest.mark.parametrize("path", PATHS_HERE)
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_the_int8_x_int8_kernel_is_within_its_quantization_bound(
    child: ChildRunner, path: str, rows: int, shape: tuple[int, int]
) -> None:
    output_shape, dtype, worst = child.run(beyond_bound, *shape, rows, path)
    assert (output_shape, dtype) == ((rows, shape[0]), str(torch.bfloat16))
    assert worst <= 1.0


@pytest.mark.skipif(len(PATHS_HERE) < 2, reason="this CPU runs one int8 x int8 path at most")
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_every_path_gives_the_same_bits(
    child: ChildRunner, rows: int, shape: tuple[int, int]
) -> None:
    assert all(child.run(bits_on_every_path, *shape, rows))


@pytest.mark.parametrize("path", PATHS_HERE)
def test_a_row_of_zeros_gives_zeros(path: str) -> None:
    x, weight, scale = case(64, 100, 3)
    x[1] = 0
    output = int8_matmul(x, weight, scale, path)
    assert torch.equal(output[1], torch.zeros(64, dtype=torch.bfloat16))


def test_the_registry_offers_the_paths_this_cpu_runs_and_only_those() -> None:
    offered = {INT8_X_INT8[name] for name in available_prefill_kernels() if name in INT8_X_INT8}
    assert offered == set(PATHS_HERE)


def rows_alone_and_together(path: str) -> list[bool]:
    """(Run in a child.) Whether each of 17 rows gets the same bits alone, among the first 2, 5,
    9 and 12 (few rows: int8_gemm.c reads weight rows one by one, in tiles of up to 8 rows on
    the VNNI path, their sums reduced one by one or 8 at once) and among all 17 (tiles of 4
    weight rows): a row's result does not depend on the others."""
    x, weight, scale = case(300, 1064, 17)
    alone = [int8_matmul(x[r : r + 1], weight, scale, path)[0] for r in range(17)]
    same = []
    for rows in (2, 5, 9, 12, 17):
        together = int8_matmul(x[:rows], weight, scale, path)
        same += [torch.equal(alone[r], together[r]) for r in range(rows)]
    return same


@pytest.mark.parametrize("path", PATHS_HERE)
def test_a_row_gets_the_same_bits_alone_and_among_others(child: ChildRunner, path: str) -> None:
    assert all(child.run(rows_alone_and_together, path))
