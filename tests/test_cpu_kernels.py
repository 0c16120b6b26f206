"""The CPU engine's kernels per machine: every candidate computes the same product, the choice
is measured once and kept, and greedy output is the reference's on whichever one is chosen."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from agent.backends.compiled_kernels import compiled_attention, load_library
from agent.backends.cpu_kernels import (
    ATTENTION_CHOICES,
    CACHE_DTYPES,
    COMPILED,
    DECODE_KERNELS,
    PREFILL_KERNELS,
    PREFILL_ROWS,
    PREFILL_TIMED_ROWS,
    SHORTER_PREFILLS,
    KernelChoice,
    available_attention,
    available_decode_kernels,
    choose_kernels,
)
from agent.backends.local_model import load_local_model
from agent.backends.qwen3_cpu import CpuQwen3
from agent.testing.reproduction import held_out_runs
from agent.testing.transcripts import encode_transcript
from tests.test_native_engine import greedy, same_logits

CHOICES = [
    *(KernelChoice(prefill=p, cache=cache) for p in PREFILL_KERNELS for cache in CACHE_DTYPES),
    KernelChoice(decode=COMPILED),
    KernelChoice(decode=COMPILED, prefill="dequantized float32", cache="bf16"),
    KernelChoice(cache="bf16", attention="compiled"),
    KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled"),
    # The prefill kernel from 16 rows: torch's int8 kernel takes 4-15, ours 1-3.
    KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled", prefill_rows=16),
]


def int8_weight(out: int, inputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randint(-127, 128, (out, inputs), dtype=torch.int8, generator=generator)
    scale = (torch.rand(out, generator=generator) / 50 + 1e-3).to(torch.bfloat16)
    return weight, scale


@pytest.mark.parametrize("name", PREFILL_KERNELS)
def test_every_prefill_kernel_computes_the_scaled_int8_product(name: str) -> None:
    weight, scale = int8_weight(1100, 96)  # outputs not a whole number of dequantized tiles
    x = torch.randn(PREFILL_ROWS + 3, 96).to(torch.bfloat16)
    exact = x.double() @ (weight.double() * scale.double().unsqueeze(1)).t()
    output = PREFILL_KERNELS[name](x, weight, scale)
    assert output.dtype == torch.bfloat16 and output.shape == exact.shape
    assert torch.allclose(output.double(), exact, rtol=2**-7, atol=2**-7 * exact.abs().max())


@pytest.mark.parametrize("name", DECODE_KERNELS)
@pytest.mark.parametrize("rows", [1, 3])
def test_every_decode_kernel_computes_the_scaled_int8_product(name: str, rows: int) -> None:
    weight, scale = int8_weight(300, 1024 + 40)  # a length of 32-blocks and a tail
    x = torch.randn(rows, weight.shape[1]).to(torch.bfloat16)
    exact = x.double() @ (weight.double() * scale.double().unsqueeze(1)).t()
    output = DECODE_KERNELS[name](x, weight, scale)
    assert output.dtype == torch.bfloat16 and output.shape == exact.shape
    assert torch.allclose(output.double(), exact, rtol=2**-7, atol=2**-7 * exact.abs().max())


@pytest.mark.parametrize("length", [1, 37, 300])
def test_compiled_attention_is_torchs_over_the_same_bf16_cache(length: int) -> None:
    generator = torch.Generator().manual_seed(length)
    keys = torch.randn(4, 320, 72, generator=generator).to(torch.bfloat16)  # capacity > length
    values = torch.randn(4, 320, 72, generator=generator).to(torch.bfloat16)
    query = torch.randn(8, 72, generator=generator) * 3  # two query heads per kv head
    exact = torch.nn.functional.scaled_dot_product_attention(
        query.double()[None, :, None],
        keys[:, :length].double()[None],
        values[:, :length].double()[None],
        enable_gqa=True,
    )[0, :, 0]
    output = compiled_attention(query, keys, values, length)
    assert output.dtype == torch.float32 and output.shape == (8, 72)
    assert torch.allclose(output.double(), exact, atol=1e-5)


def test_the_choice_is_measured_once_and_kept_beside_the_weights(tmp_path: Path) -> None:
    weights = [int8_weight(512, 128)] * 3
    measured = choose_kernels(weights, (2, 4, 32), tmp_path)
    [kept] = tmp_path.glob("kernels-*.json")
    record = json.loads(kept.read_text())
    assert KernelChoice(**record["choice"]) == measured
    # Every candidate passed its check against the float64 product, ours built here included.
    assert set(PREFILL_KERNELS) <= set(record["prefill_ms"])
    assert measured.prefill_rows in (*SHORTER_PREFILLS, PREFILL_TIMED_ROWS)
    assert set(record["decode_ms"]) == set(DECODE_KERNELS)
    assert len(record["attention_ms"]) == len(ATTENTION_CHOICES)
    # A later load reads the file instead of measuring again: what it says is what is used.
    other = next(choice for choice in CHOICES if choice != measured)
    kept.write_text(json.dumps({"choice": dataclasses.asdict(other)}))
    assert choose_kernels(weights, (2, 4, 32), tmp_path) == other
    # A damaged file is measured again and replaced; another shape is a choice of its own.
    kept.write_text('{"choice": {"prefill": "fastest')
    assert choose_kernels(weights, (2, 4, 32), tmp_path).prefill in PREFILL_KERNELS
    assert KernelChoice(**json.loads(kept.read_text())["choice"]).prefill in PREFILL_KERNELS
    choose_kernels(weights, (2, 4, 64), tmp_path)
    assert len(list(tmp_path.glob("kernels-*.json"))) == 2


@pytest.fixture
def fresh_kernel_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The compiled kernel looked for again, in an empty agent home; forgotten after."""
    monkeypatch.setenv("AGENT_HOME", str(tmp_path))
    load_library.cache_clear()
    yield tmp_path
    load_library.cache_clear()


def test_the_decode_kernel_is_built_once_per_machine(fresh_kernel_build: Path) -> None:
    assert load_library() is not None
    [built] = (fresh_kernel_build / "cache" / "kernels").glob("compiled_kernels-*.so")
    load_library.cache_clear()
    stamp = built.stat().st_mtime_ns
    assert load_library() is not None and built.stat().st_mtime_ns == stamp  # not rebuilt


@pytest.mark.parametrize("compiler", ["/nonexistent/cc", "false"])  # none; one that fails
def test_without_a_working_compiler_decode_keeps_torchs_kernel(
    fresh_kernel_build: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    compiler: str,
) -> None:
    monkeypatch.setenv("CC", compiler)
    caplog.set_level("INFO", logger="agent")
    assert list(available_decode_kernels()) == ["int8"]
    assert ("bf16", "compiled") not in available_attention()
    assert "torch's" in caplog.text
    weights = [int8_weight(256, 64)]
    chosen = choose_kernels(weights, (2, 4, 32), fresh_kernel_build)
    assert (chosen.decode, chosen.attention) == ("int8", "torch")


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: f"{c.describe()}, from {c.prefill_rows}")
def test_a_long_prompt_prefills_on_each_kernel_like_token_by_token(
    tiny_gptq: Path, choice: KernelChoice
) -> None:
    engine = CpuQwen3.load(tiny_gptq, prefix_cache_bytes=0, kernels=choice)
    tokens = [(i * 7919) % 150_000 for i in range(700)]  # a 512-token chunk and a shorter one
    chunked = engine.forward(tokens, engine.new_cache(len(tokens)))
    cache = engine.new_cache(len(tokens))
    assert cache.keys.dtype == choice.cache_dtype
    for token in tokens:  # one row at a time: the decode kernel throughout
        stepped = engine.forward([token], cache)
    assert same_logits(chunked, stepped)
    cache = engine.new_cache(len(tokens))
    for start in range(0, len(tokens), 10):  # ten rows at a time: the kernels in between
        pieces = engine.forward(tokens[start : start + 10], cache)
    assert same_logits(chunked, pieces)


@pytest.fixture(scope="module")
def reference_outputs(tiny_trained_gptq: Path) -> list[tuple[list[int], list[int]]]:
    """Greedy outputs of transformers + GPTQModel for held-out agent prompts."""
    reference = load_local_model(str(tiny_trained_gptq), device="cpu", engine="transformers")
    cases = []
    for zone, transcript in held_out_runs(per_kind=2):
        for example in encode_transcript(transcript, reference.tokenizer, zone):
            prompt, room = list(example.prompt), len(example.target) + 4
            cases.append((prompt, greedy(reference, prompt, room)))
    assert sum(len(prompt) >= PREFILL_ROWS for prompt, _ in cases) >= 10  # prefill kernel used
    return cases


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: f"{c.describe()}, from {c.prefill_rows}")
def test_greedy_output_is_the_references_on_every_kernel(
    tiny_trained_gptq: Path, reference_outputs: list[tuple[list[int], list[int]]], choice
) -> None:
    native = load_local_model(str(tiny_trained_gptq), device="cpu", engine="native")
    engine = CpuQwen3(native.engine.weights, prefix_cache_bytes=0, kernels=choice)
    loaded = dataclasses.replace(native, engine=engine)
    for prompt, expected in reference_outputs:
        assert greedy(loaded, prompt, len(expected)) == expected


def test_the_fused_decode_step_computes_what_the_torch_path_does(tiny_gptq: Path) -> None:
    choice = KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled")
    engine = CpuQwen3.load(tiny_gptq, prefix_cache_bytes=0, kernels=choice)
    fused = engine.fused_decode
    assert fused is not None
    tokens = [(i * 7919) % 150_000 for i in range(300)]
    caches = engine.new_cache(len(tokens)), engine.new_cache(len(tokens))
    for token in tokens:
        engine.fused_decode = fused
        compiled = engine.forward([token], caches[0])
        engine.fused_decode = None
        stepped = engine.forward([token], caches[1])
        assert same_logits(compiled, stepped)
    filled = len(tokens)
    for written in (lambda c: c.keys[:, :, :filled], lambda c: c.values[:, :, :filled]):
        assert torch.allclose(*(written(cache) for cache in caches), atol=0.05)


@pytest.mark.parametrize(
    "choice",
    [KernelChoice(COMPILED, cache="bf16"), KernelChoice(cache="bf16", attention="compiled")],
    ids=["torch attention", "torch decode matmul"],
)
def test_the_fused_step_runs_only_on_the_kernels_it_fuses(
    tiny_gptq: Path, choice: KernelChoice
) -> None:
    assert CpuQwen3.load(tiny_gptq, prefix_cache_bytes=0, kernels=choice).fused_decode is None
