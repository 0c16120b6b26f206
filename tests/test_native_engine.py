"""The native CPU engine: same int8 weights and greedy output as the transformers + GPTQModel
reference, and prefix reuse across calls that is correct whether the prefix matches or not."""

import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from qwen_agent.llm.schema import Message
from safetensors import safe_open
from safetensors.torch import save_file

from agent.backends.local import LocalQwen
from agent.engine.generate import Usage, generate_token_ids
from agent.engine.kv_cache import KVCache, PrefixCache
from agent.engine.loading import load_local_model
from agent.engine.model import CpuQwen3
from agent.engine.weights import _CheckpointReader, load_qwen3_weights
from agent.testing.reproduction import GREEDY, held_out_runs
from agent.testing.transcripts import (
    encode_transcript,
    load_tool_schemas,
    render_transcript,
    time_task,
)
from tests.clirun import agent_cli

PROMPT = "<|im_start|>user\nWhat time is it in Tokyo?<|im_end|>\n<|im_start|>assistant\n"


def greedy(loaded, prompt: list[int], count: int, usage: Usage | None = None) -> list[int]:
    return list(generate_token_ids(loaded, prompt, GREEDY, count, 0, usage or Usage()))


def fresh_logits(engine: CpuQwen3, tokens: list[int]) -> torch.Tensor:
    return engine.forward(tokens, engine.new_cache(len(tokens)))


def test_int8_weights_equal_gptqmodels_int8_kernel(tiny_trained_gptq: Path) -> None:
    reference = load_local_model(str(tiny_trained_gptq), device="cpu", engine="transformers")
    ours = load_qwen3_weights(tiny_trained_gptq)
    hf_layers = reference.engine.model.model.layers
    for hf, mine in zip(hf_layers, ours.layers, strict=True):
        projections = [hf.self_attn.q_proj, hf.self_attn.k_proj, hf.self_attn.v_proj]
        weight = torch.cat([p.int8_weight_nk for p in projections])
        scale = torch.cat([p.int8_channel_scale for p in projections]).to(torch.bfloat16)
        assert torch.equal(weight, mine.qkv.weight)
        assert torch.equal(scale, mine.qkv.scale)
        assert torch.equal(hf.mlp.down_proj.int8_weight_nk, mine.down.weight)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_trained_gptq", "tiny_trained_float"])
def test_greedy_output_is_token_for_token_the_references(fixture: str, request) -> None:
    model_dir = request.getfixturevalue(fixture)
    native = load_local_model(str(model_dir), device="cpu", engine="native")
    reference = load_local_model(str(model_dir), device="cpu", engine="transformers")
    compared = 0
    for zone, transcript in held_out_runs(per_kind=2):
        for example in encode_transcript(transcript, native.tokenizer, zone):
            prompt, room = list(example.prompt), len(example.target) + 4
            assert greedy(native, prompt, room) == greedy(reference, prompt, room)
            compared += 1
    assert compared >= 15


def test_unquantized_logits_match_transformers(tiny_trained_float: Path) -> None:
    native = load_local_model(str(tiny_trained_float), device="cpu", engine="native")
    reference = load_local_model(str(tiny_trained_float), device="cpu", engine="transformers")
    prompt = native.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    ours = fresh_logits(native.engine, prompt)
    theirs = run_and_keep(reference.engine, prompt)  # whatever prefix it reuses
    assert torch.allclose(ours, theirs, atol=0.1), (ours - theirs).abs().max()
    assert int(ours.argmax()) == int(theirs.argmax())


@pytest.mark.slow
def test_a_long_prompt_prefills_in_chunks_like_one_pass(tiny_gptq: Path) -> None:
    engine = CpuQwen3.load(tiny_gptq, prefix_cache_bytes=0)
    tokens = [(i * 7919) % 150_000 for i in range(1_100)]  # over two 512-token chunks
    chunked = fresh_logits(engine, tokens)
    cache = engine.new_cache(len(tokens))
    for token in tokens:  # one token at a time: the decode path for every position
        stepped = engine.forward([token], cache)
    assert same_logits(chunked, stepped)


def test_second_call_reuses_the_first_calls_prefix(tiny_trained_gptq: Path) -> None:
    loaded = load_local_model(str(tiny_trained_gptq), device="cpu", kv_cache_mb=64)
    loaded.engine.prefix_cache.clear()
    first = loaded.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    usage = Usage()
    output = greedy(loaded, first, 8, usage)
    assert usage.reused_prompt_tokens == 0
    # The next agent step: the prompt so far, the model's output, a tool result, a new turn.
    turn = loaded.tokenizer("\n<|im_start|>user\nok<|im_end|>\n", add_special_tokens=False)
    second = first + output + turn["input_ids"]
    reuse = Usage()
    reused_output = greedy(loaded, second, 8, reuse)
    assert reuse.reused_prompt_tokens == len(first) + len(output)
    loaded.engine.prefix_cache.clear()
    assert greedy(loaded, second, 8) == reused_output  # same as computing it all afresh


def same_logits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=0.05) and int(a.argmax()) == int(b.argmax())


def run_and_keep(engine, prompt: list[int]) -> torch.Tensor:
    cache = engine.checkout(prompt)
    logits = engine.forward(prompt[cache.length :], cache)
    engine.checkin(cache)
    return logits


@pytest.mark.parametrize("tail", [3, 600])  # overwritten in place / copied, the original kept
def test_a_diverging_prompt_reuses_the_shared_part_only(tiny_gptq: Path, tail: int) -> None:
    engine = CpuQwen3.load(tiny_gptq, prefix_cache_bytes=64 << 20)
    shared = [(i * 31) % 150_000 for i in range(700)]
    first = shared + [(i * 17) % 150_000 for i in range(tail)]
    second = shared + [21, 22]
    run_and_keep(engine, first)
    reused = engine.checkout(second)
    assert reused.length == len(shared)
    logits = engine.forward(second[reused.length :], reused)
    engine.checkin(reused)
    assert same_logits(logits, fresh_logits(engine, second))
    again = engine.checkout(first)
    assert again.length == (len(first) - 1 if tail > 512 else len(shared))
    assert same_logits(engine.forward(first[again.length :], again), fresh_logits(engine, first))


def test_an_identical_prompt_recomputes_only_its_last_token(tiny_gptq: Path) -> None:
    engine = CpuQwen3.load(tiny_gptq, prefix_cache_bytes=64 << 20)
    prompt = list(range(1000, 1040))
    expected = run_and_keep(engine, prompt)
    again = engine.checkout(prompt)
    assert again.length == len(prompt) - 1
    assert same_logits(engine.forward(prompt[-1:], again), expected)


def kv_cache(tokens: list[int], capacity: int = 8) -> KVCache:
    cache = KVCache(layers=1, kv_heads=1, head_dim=4, capacity=capacity, dtype=torch.float32)
    cache.tokens = list(tokens)
    return cache


def test_prefix_cache_keeps_the_most_recent_under_its_budget() -> None:
    one = kv_cache([1]).nbytes
    caches = PrefixCache(max_bytes=2 * one)
    for first in (1, 2, 3):
        caches.checkin(kv_cache([first, 9]))
    assert len(caches) == 2 and caches.nbytes <= 2 * one
    assert caches.checkout([1, 9, 9], lambda: kv_cache([])).length == 0  # the oldest was dropped
    assert caches.checkout([3, 9, 9], lambda: kv_cache([])).length == 2
    disabled = PrefixCache(max_bytes=0)
    disabled.checkin(kv_cache([1, 2]))
    assert len(disabled) == 0


def test_chat_turns_reuse_the_conversation_so_far(tiny_trained_gptq: Path) -> None:
    cfg = {"model": str(tiny_trained_gptq), "model_type": "agent_local", "device": "cpu"}
    llm = LocalQwen({**cfg, "disk_cache_mb": 0, "generate_cfg": {}})  # in-process reuse only
    llm.loaded.engine.prefix_cache.clear()
    settings = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 8}
    turn = [Message("system", "You are a helpful assistant."), Message("user", "Hello")]
    answer = llm._chat_no_stream(turn, settings)[0].content
    turn += [Message("assistant", answer), Message("user", "And in Paris?")]
    llm._chat_no_stream(turn, settings)
    # Everything up to the first answer is reused, but the empty think block that ends a
    # non-thinking prompt: the template drops it from the history.
    first_prompt = llm.render_prompt(turn[:2]).removesuffix("<think>\n\n</think>\n\n")
    assert llm.usage.reused_prompt_tokens == len(llm.loaded.tokenizer(first_prompt)["input_ids"])


def test_repacked_weights_are_kept_and_reloaded_exactly(tiny_gptq: Path, tmp_path: Path) -> None:
    repacked = tmp_path / "repacked"
    first = load_qwen3_weights(tiny_gptq, repack_dir=repacked)
    assert len(list(repacked.iterdir())) == 1  # one file, no scratch left behind
    again = load_qwen3_weights(tiny_gptq, repack_dir=repacked)
    pairs = [(first.lm_head, again.lm_head), (first.layers[1].down, again.layers[1].down)]
    for mine, theirs in pairs:
        assert torch.equal(mine.weight, theirs.weight) and torch.equal(mine.scale, theirs.scale)
    prompt = list(range(1000, 1100))  # the reloaded weights run (a mapped tensor once crashed)
    assert torch.equal(
        fresh_logits(CpuQwen3(again, 0), prompt), fresh_logits(CpuQwen3(first, 0), prompt)
    )


def test_a_changed_checkpoint_is_repacked_again(tiny_gptq: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_gptq, copy)
    load_qwen3_weights(copy, repack_dir=tmp_path / "repacked")
    weights = copy / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    load_qwen3_weights(copy, repack_dir=tmp_path / "repacked")
    assert len(list((tmp_path / "repacked").iterdir())) == 2


def test_an_unknown_engine_is_a_one_line_error(tmp_path: Path) -> None:
    done = agent_cli("run", "Hello", "--engine", "turbo", home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: engine must be one of auto, native, transformers, not 'turbo'"
    ]


def test_the_agent_prompt_is_stable_up_to_the_users_question(qwen3_tokenizer) -> None:
    rng = random.Random(3)
    schemas = load_tool_schemas()
    runs = [render_transcript(time_task(rng), qwen3_tokenizer, schemas) for _ in range(2)]
    (first, _), (second_step, _) = runs[0][:2]
    other = runs[1][0][0]
    user_turn = first.rindex("<|im_start|>user\n")
    assert "get_current_time" in first[:user_turn]  # the tool schemas come before it
    assert other[:user_turn] == first[:user_turn]  # nothing volatile before the question
    assert other[user_turn:] != first[user_turn:]
    assert second_step.startswith(first.removesuffix("<think>\n\n</think>\n\n"))


def test_a_bf16_token_embedding_is_mapped_from_its_file_not_read(tmp_path: Path) -> None:
    rows = torch.randn(300, 64).to(torch.bfloat16)
    save_file({"embed": rows, "wide": torch.randn(4, 4)}, str(tmp_path / "model.safetensors"))
    reader = _CheckpointReader(tmp_path)
    mapped = reader.mapped_bf16("embed")
    assert mapped is not None and torch.equal(mapped, rows)
    assert mapped[torch.tensor([3, 299])].tolist() == rows[[3, 299]].tolist()
    assert reader.mapped_bf16("wide") is None  # float32 on disk: read and converted instead


def test_the_engine_reads_its_embedding_from_the_mapped_checkpoint(tiny_gptq: Path) -> None:
    weights = load_qwen3_weights(tiny_gptq)
    with safe_open(str(tiny_gptq / "model.safetensors"), framework="pt") as handle:
        on_disk = handle.get_tensor("model.embed_tokens.weight")
    assert torch.equal(weights.embed, on_disk)
    assert not weights.embed.untyped_storage().resizable()  # numpy's mapping, not torch's copy
