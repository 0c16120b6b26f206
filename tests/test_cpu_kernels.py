"""The CPU engine's kernels per machine: every candidate computes the same product, the choice
is measured once and kept, and greedy output is the reference's on whichever one is chosen."""

import dataclasses
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from agent.engine.kernels import choice as cpu_kernels
from agent.engine.kernels.choice import (
    ATTENTION_CHOICES,
    CACHE_DTYPES,
    COMPILED,
    DECODE_KERNELS,
    DECODE_ROWS,
    INT8_X_INT8,
    INT8_X_INT8_MIN_INPUTS,
    MATMUL_KERNELS,
    PREFILL_KERNELS,
    PREFILL_ROWS,
    PREFILL_TIMED_ROWS,
    SHORTER_PREFILLS,
    KernelChoice,
    available_attention,
    available_decode_kernels,
    available_prefill_kernels,
    choose_kernels,
    int8pack,
)
from agent.engine.kernels.compiled import compiled_attention, load_library
from agent.engine.loading import load_local_model
from agent.engine.model import CpuQwen3
from agent.engine.weights import _CheckpointReader, _LinearLoader
from agent.testing.reproduction import held_out_runs
from agent.testing.transcripts import encode_transcript
from tests.child_process import ChildCrashed, ChildRunner
from tests.test_native_engine import greedy, same_logits

INT8_X_INT8_HERE = [name for name in available_prefill_kernels() if name in INT8_X_INT8]
CHOICES = [
    *(
        KernelChoice(prefill=p, cache=cache)
        for p in available_prefill_kernels()
        for cache in CACHE_DTYPES
    ),
    KernelChoice(decode=COMPILED),
    KernelChoice(decode=COMPILED, prefill="dequantized float32", cache="bf16"),
    KernelChoice(cache="bf16", attention="compiled"),
    KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled"),
    # The prefill kernel from 16 rows: torch's int8 kernel takes 4-15, ours 1-3.
    KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled", prefill_rows=16),
    # The int8 x int8 kernel from 4 rows: every call of more rows than decode's.
    *(KernelChoice(COMPILED, p, "bf16", "compiled", prefill_rows=4) for p in INT8_X_INT8_HERE),
    # ... and for decode too: the compiled step's matmuls int8 x int8.
    *(KernelChoice(p, p, "bf16", "compiled", prefill_rows=4) for p in INT8_X_INT8_HERE),
]
# The compiled decode step on each arithmetic it runs here: float32, each int8 x int8 path.
FUSED_CHOICES = [
    KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled"),
    *(KernelChoice(p, p, "bf16", "compiled", prefill_rows=4) for p in INT8_X_INT8_HERE),
]


def int8_weight(out: int, inputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randint(-127, 128, (out, inputs), dtype=torch.int8, generator=generator)
    scale = (torch.rand(out, generator=generator) / 50 + 1e-3).to(torch.bfloat16)
    return weight, scale


# (outputs, inputs): input sizes that are multiples of 16 and of 32-blocks with a tail, and
# sizes that are multiples of nothing (the odd checkpoint's 136 and 392 among them).
MATMUL_SHAPES = [(1100, 96), (300, 1064), (392, 136), (136, 392), (257, 100), (33, 1025)]
MATMUL_ROWS = [1, 3, 4, 15, PREFILL_ROWS + 3]


def matmul_case(name: str, rows: int, out: int, inputs: int) -> tuple[str, tuple, bool]:
    """Kernel `name` on one case (run in a child): its dtype, shape and whether it is exact."""
    weight, scale = int8_weight(out, inputs)
    x = torch.randn(rows, inputs, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    exact = x.double() @ (weight.double() * scale.double().unsqueeze(1)).t()
    output = MATMUL_KERNELS[name](x, weight, scale)
    close = torch.allclose(output.double(), exact, rtol=2**-7, atol=2**-7 * exact.abs().max())
    return str(output.dtype), tuple(output.shape), close


@pytest.fixture(scope="module")
def child() -> Iterator[ChildRunner]:
    runner = ChildRunner()
    yield runner
    runner.close()


# The int8 x int8 kernels quantize their input: tests/test_int8_gemm.py checks them against
# the bound that allows.
@pytest.mark.parametrize("name", [name for name in MATMUL_KERNELS if name not in INT8_X_INT8])
@pytest.mark.parametrize("rows", MATMUL_ROWS)
@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_every_matmul_kernel_computes_the_scaled_int8_product(
    child: ChildRunner, name: str, rows: int, shape: tuple[int, int]
) -> None:
    dtype, output_shape, close = child.run(matmul_case, name, rows, *shape)
    assert (dtype, output_shape) == (str(torch.bfloat16), (rows, shape[0]))
    assert close


def segfault() -> None:
    """What torch's int8 kernel did on AVX-512 to an input size that is not a multiple of 16."""
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_case_that_kills_its_process_fails_alone(child: ChildRunner) -> None:
    with pytest.raises(ChildCrashed, match="SIGSEGV"):
        child.run(segfault)
    assert child.run(matmul_case, "int8", 1, 16, 32)[2]  # the next case runs in a new child


@pytest.mark.parametrize("shape", MATMUL_SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_torchs_int8_kernel_is_handed_only_input_sizes_it_computes_right(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int]
) -> None:
    handed = []

    def recording(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        handed.append((x.shape[1], weight.shape[1]))
        if weight.shape[1] % 16:  # where torch 2.13 is wrong or crashes on AVX-512
            raise AssertionError(f"handed an input size of {weight.shape[1]}")
        return aten_int8pack_mm(x, weight, scale)

    aten_int8pack_mm = cpu_kernels._aten_int8pack_mm
    monkeypatch.setattr(cpu_kernels, "_aten_int8pack_mm", recording)
    weight, scale = int8_weight(*shape)
    x = torch.randn(4, shape[1]).to(torch.bfloat16)
    exact = x.double() @ (weight.double() * scale.double().unsqueeze(1)).t()
    output = int8pack(x, weight, scale)
    assert handed == [(-(-shape[1] // 16) * 16,) * 2]  # padded to the next multiple of 16
    assert torch.allclose(output.double(), exact, rtol=2**-7, atol=2**-7 * exact.abs().max())


def wrong_on_tails(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A test double of a broken kernel: torch's int8 kernel where the input size is a multiple
    of 16, zeros elsewhere (what torch 2.13 gives on AVX-512 at one row)."""
    if weight.shape[1] % 16:
        return torch.zeros(x.shape[0], weight.shape[0], dtype=torch.bfloat16)
    return int8pack(x, weight, scale)


def test_a_kernel_wrong_on_one_of_the_models_shapes_is_not_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="agent")
    for kernels in (PREFILL_KERNELS, DECODE_KERNELS, MATMUL_KERNELS):
        monkeypatch.setitem(kernels, "int8", wrong_on_tails)
    timed = [int8_weight(512, 128)]
    # Checked on the timed shape only, the broken kernel is a candidate like the others.
    without = choose_kernels(timed, (2, 4, 32), tmp_path / "timed shape")
    [kept] = (tmp_path / "timed shape").glob("kernels-*.json")
    record = json.loads(kept.read_text())
    assert record["failed_checks"] == {} and "int8" in record["decode_ms"]
    # Measured against torch's int8 kernel, which takes the rows in between where it is faster.
    assert without.prefill_rows in (*SHORTER_PREFILLS, PREFILL_TIMED_ROWS)
    # Checked on the model's shapes, one of which has an input size of 136, it is not.
    checked = [int8_weight(512, 128), int8_weight(64, 136)]
    chosen = choose_kernels(timed, (2, 4, 32), tmp_path / "model shapes", checked)
    [kept] = (tmp_path / "model shapes").glob("kernels-*.json")
    record = json.loads(kept.read_text())
    assert record["failed_checks"] == {"int8": "wrong for 1 rows of a [64, 136] weight"}
    assert "int8" not in record["decode_ms"] and "int8" not in record["prefill_ms"]
    assert "int8" not in (chosen.decode, chosen.prefill)
    assert chosen.prefill_rows == DECODE_ROWS  # so it takes no calls in between either
    assert "kernel int8 is not used on this machine: wrong for 1 rows" in caplog.text


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


def test_the_int8_x_int8_kernels_are_offered_where_rows_span_several_blocks(
    tmp_path: Path,
) -> None:
    choose_kernels([int8_weight(64, INT8_X_INT8_MIN_INPUTS)], (2, 4, 32), tmp_path)
    [kept] = tmp_path.glob("kernels-*.json")
    record = json.loads(kept.read_text())
    assert set(INT8_X_INT8_HERE) <= set(record["prefill_ms"]) & set(record["decode_ms"])


def test_the_choice_is_measured_once_and_kept_beside_the_weights(tmp_path: Path) -> None:
    weights = [int8_weight(512, 128)] * 3
    measured = choose_kernels(weights, (2, 4, 32), tmp_path)
    [kept] = tmp_path.glob("kernels-*.json")
    record = json.loads(kept.read_text())
    assert KernelChoice(**record["choice"]) == measured
    # Every candidate passed its check against the float64 product, ours built here included;
    # inputs of 128 are under one activation block, so the int8 x int8 kernels are not offered.
    offered = set(available_prefill_kernels()) - set(INT8_X_INT8)
    assert offered <= set(record["prefill_ms"]) and not set(INT8_X_INT8) & set(record["prefill_ms"])
    assert measured.prefill_rows in (*SHORTER_PREFILLS, PREFILL_TIMED_ROWS)
    assert set(record["decode_ms"]) == set(available_decode_kernels()) - set(INT8_X_INT8)
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: f"{c.describe()}, from {c.prefill_rows}")
def test_greedy_output_is_the_references_on_every_kernel(
    tiny_trained_gptq: Path, reference_outputs: list[tuple[list[int], list[int]]], choice
) -> None:
    native = load_local_model(str(tiny_trained_gptq), device="cpu", engine="native")
    engine = CpuQwen3(native.engine.weights, prefix_cache_bytes=0, kernels=choice)
    loaded = dataclasses.replace(native, engine=engine)
    for prompt, expected in reference_outputs:
        assert greedy(loaded, prompt, len(expected)) == expected


@pytest.mark.parametrize("choice", FUSED_CHOICES, ids=lambda c: c.decode)
def test_the_fused_decode_step_computes_what_the_torch_path_does(
    tiny_gptq: Path, choice: KernelChoice
) -> None:
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
    "fixture",
    [
        "tiny_gptq",
        pytest.param("tiny_odd_gptq", marks=pytest.mark.slow),
        pytest.param("tiny_trained_gptq", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("choice", FUSED_CHOICES, ids=lambda c: c.decode)
def test_a_fused_batch_gives_each_sequence_what_it_gets_decoded_alone(
    fixture: str, request: pytest.FixtureRequest, choice: KernelChoice
) -> None:
    engine = CpuQwen3.load(request.getfixturevalue(fixture), prefix_cache_bytes=0, kernels=choice)
    fused = engine.fused_decode
    assert fused is not None
    # Eight sequences of different lengths; caches with little room grow between steps.
    prompts = [[(i * 7919 + n) % 150_000 for i in range(1 + 9 * n)] for n in range(8)]
    batched = [engine.new_cache(len(prompt) + 1) for prompt in prompts]
    alone = [engine.new_cache(64) for _ in prompts]
    unfused = [engine.new_cache(64) for _ in prompts]
    for prompt, *caches in zip(prompts, batched, alone, unfused, strict=True):
        for cache in caches:
            engine.forward(prompt, cache)
    for step in range(3):
        tokens = [(step * 31 + n * 17) % 150_000 for n in range(len(prompts))]
        together = engine.forward_batch(tokens, batched)
        apart = torch.stack([engine.forward([t], c) for t, c in zip(tokens, alone, strict=True)])
        assert torch.equal(together, apart)  # the same sums, whatever else is in the batch
        engine.fused_decode = None
        torch_path = engine.forward_batch(tokens, unfused)
        engine.fused_decode = fused
        assert all(map(same_logits, together, torch_path))
    for mine, theirs in zip(batched, alone, strict=True):
        filled = mine.length
        assert mine.tokens == theirs.tokens
        assert torch.equal(mine.keys[:, :, :filled], theirs.keys[:, :, :filled])
        assert torch.equal(mine.values[:, :, :filled], theirs.values[:, :, :filled])


@pytest.mark.parametrize("choice", FUSED_CHOICES, ids=lambda c: c.decode)
def test_one_fused_step_verifies_blocks_of_several_sequences(
    tiny_gptq: Path, choice: KernelChoice
) -> None:
    engine = CpuQwen3.load(tiny_gptq, prefix_cache_bytes=0, kernels=choice)
    prompts = [
        [(i * 7919 + n) % 150_000 for i in range(length)] for n, length in enumerate((5, 30, 12))
    ]
    drafts = [[11, 12, 13], [21], [31, 32]]  # a drafted block, a lone token, another block
    together = [engine.new_cache(len(prompt) + 1) for prompt in prompts]  # they grow
    alone = [engine.new_cache(64) for _ in prompts]
    for prompt, *caches in zip(prompts, together, alone, strict=True):
        for cache in caches:
            engine.forward(prompt, cache)
    verified = engine.verify_blocks(list(zip(drafts, together, strict=True)))
    for logits, draft, cache in zip(verified, drafts, alone, strict=True):
        assert torch.equal(logits, engine.verify(draft, cache))
    for mine, theirs in zip(together, alone, strict=True):
        filled = mine.length
        assert mine.tokens == theirs.tokens
        assert torch.equal(mine.keys[:, :, :filled], theirs.keys[:, :, :filled])
        assert torch.equal(mine.values[:, :, :filled], theirs.values[:, :, :filled])


@pytest.mark.parametrize(
    "choice",
    [KernelChoice(COMPILED, cache="bf16"), KernelChoice(cache="bf16", attention="compiled")],
    ids=["torch attention", "torch decode matmul"],
)
def test_the_fused_step_runs_only_on_the_kernels_it_fuses(
    tiny_gptq: Path, choice: KernelChoice
) -> None:
    assert CpuQwen3.load(tiny_gptq, prefix_cache_bytes=0, kernels=choice).fused_decode is None


def dequantized_reference(checkpoint: Path) -> Qwen3ForCausalLM:
    """transformers' Qwen3 in float32 with the GPTQ checkpoint's weights dequantized."""
    config = json.loads((checkpoint / "config.json").read_text())
    quant = config.pop("quantization_config")
    model = Qwen3ForCausalLM(Qwen3Config(**config)).float().eval()
    reader = _CheckpointReader(checkpoint)
    projections = _LinearLoader(reader, quant)
    state = {}
    for name in model.state_dict():
        if name.endswith("_proj.weight"):
            state[name] = projections.weight_kn(name.removesuffix(".weight")).t()
        elif reader.has(name):
            state[name] = reader.get(name).float()
    assert set(model.state_dict()) - set(state) == {"lm_head.weight"}  # tied to the embedding
    model.load_state_dict(state, strict=False)
    return model


def odd_checkpoint_differences(checkpoint: Path, choice: KernelChoice | None) -> list[bool]:
    """(Run in a child.) Whether the engine's next-token logits, on `choice` (None: the ones its
    self-test picks on this machine), are the float reference's: after a 200-token prompt
    (the prefill kernel), then each of 10 tokens decoded one by one, then 10 more at once."""
    tokens = [(i * 7919) % 150_000 for i in range(220)]
    with torch.inference_mode():
        hidden = dequantized_reference(checkpoint).model(torch.tensor([tokens])).last_hidden_state
        exact = torch.nn.functional.linear(hidden[0], reference_embedding(checkpoint))
    engine = CpuQwen3.load(checkpoint, prefix_cache_bytes=0, kernels=choice)
    cache = engine.new_cache(len(tokens))
    same = [same_logits(engine.forward(tokens[:200], cache), exact[199])]
    same += [same_logits(engine.forward([tokens[i]], cache), exact[i]) for i in range(200, 210)]
    return [*same, same_logits(engine.forward(tokens[210:], cache), exact[219])]


def reference_embedding(checkpoint: Path) -> torch.Tensor:
    return _CheckpointReader(checkpoint).get("model.embed_tokens.weight").float()


@pytest.mark.parametrize(
    "choice", [None, *CHOICES], ids=lambda c: "measured" if c is None else c.describe()
)
@pytest.mark.slow
def test_a_checkpoint_of_odd_sizes_runs_like_its_float_reference(
    child: ChildRunner, tiny_odd_gptq: Path, choice: KernelChoice | None
) -> None:
    assert all(child.run(odd_checkpoint_differences, tiny_odd_gptq, choice))
