"""Lookup decoding: drafts from the context verified in one pass give exactly plain decoding's
output (greedy: the same tokens; sampled: the same distribution), drafts are really accepted
where the answer quotes its context, the grammar still holds, and drafting stops where it fails."""

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from agent.config import NON_THINKING_PRESET, load_settings
from agent.engine.constrained import AUTO, REQUIRED, ToolCallConstraint, grammar_tools
from agent.engine.generate import Usage, generate_token_ids
from agent.engine.kernels.choice import COMPILED, KernelChoice
from agent.engine.loading import LoadedModel, load_local_model
from agent.engine.lookup import MISSES_TO_PAUSE, DraftLength, LookupDrafter, NgramIndex
from agent.engine.model import CpuQwen3
from agent.engine.sampling import (
    SamplingParams,
    accept_or_resample,
    sample_adjusted,
    sampling_distribution,
    verify_drafted,
)
from agent.loop.assistant import llm_config
from agent.server.batching import DecodeBatcher
from agent.testing.reproduction import GREEDY, held_out_runs
from agent.testing.transcripts import encode_transcript, fetch_task, load_tool_schemas

# The kernels of the fused decode step, which verifies drafts (chosen per machine otherwise).
FUSED = KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled")
SAMPLED = dataclasses.replace(NON_THINKING_PRESET, presence_penalty=1.5)


def fused(model_dir: Path) -> LoadedModel:
    native = load_local_model(str(model_dir), device="cpu", engine="native")
    engine = CpuQwen3(native.engine.weights, prefix_cache_bytes=0, kernels=FUSED)
    return dataclasses.replace(native, engine=engine)


@pytest.fixture(scope="module")
def trained(tiny_trained_gptq: Path) -> LoadedModel:
    return fused(tiny_trained_gptq)


def generate(loaded: LoadedModel, prompt, params, lookup: bool, usage: Usage, **kw) -> list[int]:
    return list(
        generate_token_ids(loaded, list(prompt), params, 120, 7, usage, lookup=lookup, **kw)
    )


# --- the engine: a block of rows is each row alone --------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_gptq", "tiny_odd_gptq"])  # odd: every tail loop
def test_verify_gives_the_logits_of_decoding_one_by_one(fixture: str, request) -> None:
    engine = fused(request.getfixturevalue(fixture)).engine
    assert isinstance(engine, CpuQwen3) and engine.verifies_drafts
    tokens = [(i * 7919) % 150_000 for i in range(40)]
    stepped, blocked = engine.new_cache(64), engine.new_cache(64)
    engine.forward(tokens[:30], stepped)
    engine.forward(tokens[:30], blocked)
    one_by_one = torch.stack([engine.forward([token], stepped) for token in tokens[30:]])
    assert torch.equal(engine.verify(tokens[30:], blocked), one_by_one)
    assert torch.equal(stepped.keys[:, :, :40], blocked.keys[:, :, :40])
    assert torch.equal(stepped.values[:, :, :40], blocked.values[:, :, :40])


def test_engines_without_the_fused_step_do_not_draft(tiny_trained_gptq: Path) -> None:
    native = load_local_model(str(tiny_trained_gptq), device="cpu", engine="native")
    torch_path = CpuQwen3(native.engine.weights, 0, kernels=KernelChoice(cache="bf16"))
    loaded = dataclasses.replace(native, engine=torch_path)
    [example, _] = encode_transcript(fetch_task(random.Random(5)), loaded.tokenizer)
    usage = Usage()
    generate(loaded, example.prompt, GREEDY, True, usage)
    assert usage.verifications == 0


# --- exactness on the trained model, which quotes its tool results ----------------------------


@pytest.mark.parametrize("batched", [False, True], ids=["engine", "server's batcher"])
def test_greedy_output_is_the_same_and_drafts_are_accepted(
    trained: LoadedModel, batched: bool
) -> None:
    loaded = (
        dataclasses.replace(trained, engine=DecodeBatcher(trained.engine)) if batched else trained
    )
    plain, lookup = Usage(), Usage()
    for zone, transcript in held_out_runs(1):
        for example in encode_transcript(transcript, loaded.tokenizer, zone):
            expected = generate(loaded, example.prompt, GREEDY, False, plain)
            assert generate(loaded, example.prompt, GREEDY, True, lookup) == expected
    assert plain.verifications == 0
    assert lookup.verifications > 0 and lookup.accepted_tokens > 0.3 * lookup.drafted_tokens
    assert lookup.completion_tokens == plain.completion_tokens


def test_sampling_with_a_seed_stays_reproducible_and_quotes(trained: LoadedModel) -> None:
    usage = Usage()
    for zone, transcript in held_out_runs(1):
        *_, answer = encode_transcript(transcript, trained.tokenizer, zone)
        first = generate(trained, answer.prompt, SAMPLED, True, usage)
        assert generate(trained, answer.prompt, SAMPLED, True, Usage()) == first
        assert transcript.quoted in trained.tokenizer.decode(first)
    assert usage.accepted_tokens > 0


@pytest.mark.parametrize("choice", [AUTO, REQUIRED])
def test_constrained_calls_stay_valid_and_the_same(trained: LoadedModel, choice: str) -> None:
    transcript = fetch_task(random.Random(11))
    [call, _] = encode_transcript(transcript, trained.tokenizer)
    functions = load_tool_schemas()
    tools = grammar_tools(
        trained.path, trained.tokenizer, trained.engine.vocab_size, trained.stop_ids
    )
    outputs, usages = [], [Usage(), Usage()]
    for lookup, usage in zip((False, True), usages, strict=True):
        constraint = ToolCallConstraint(tools, functions, choice)
        outputs.append(generate(trained, call.prompt, GREEDY, lookup, usage, constraint=constraint))
    assert outputs[1] == outputs[0]
    assert call_of(trained.tokenizer.decode(outputs[1])) == call_of(transcript.outputs[0])
    assert usages[1].constrained_tokens > 10 and usages[1].accepted_tokens > 0


def test_the_grammar_cuts_drafts_where_it_refuses_them(trained: LoadedModel) -> None:
    tools = grammar_tools(
        trained.path, trained.tokenizer, trained.engine.vocab_size, trained.stop_ids
    )
    constraint = ToolCallConstraint(tools, load_tool_schemas(), AUTO)
    words = trained.tokenizer(" hello there", add_special_tokens=False)["input_ids"]
    assert constraint.draftable([*words, tools.ids.call_open, *words]) == len(words)
    constraint.advance(tools.ids.call_open)  # a call opens: its grammar decides from here
    good = trained.tokenizer('\n{"name": "fetch', add_special_tokens=False)["input_ids"]
    assert constraint.draftable([*good, *words]) == len(good)


def call_of(text: str) -> dict:
    return json.loads(text.split("<tool_call>", 1)[1].split("</tool_call>", 1)[0])


# --- the acceptance rule ----------------------------------------------------------------------


def frequencies(draw, count: int, size: int) -> torch.Tensor:
    seen = torch.zeros(size)
    for _ in range(count):
        seen[draw()] += 1
    return seen / count


@pytest.mark.parametrize("draft", [0, 1, 3, 4])  # likeliest, middling, unlikely, never
def test_accept_or_resample_draws_from_the_targets_distribution(draft: int) -> None:
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    candidates = torch.tensor([0, 1, 2, 3, 4])
    generator = torch.Generator().manual_seed(draft)
    drawn = frequencies(lambda: accept_or_resample(candidates, probs, draft, generator), 10_000, 5)
    # A rule that, on a rejection, drew from p again would give the draft p + (1 - p) p:
    # 0.75 for the likeliest, 0.44 for the middling one.
    assert torch.allclose(drawn, probs, atol=0.02), drawn


def test_a_drafted_place_is_distributed_as_plain_sampling() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, generator=generator) * 2
    params = SamplingParams(temperature=0.7, top_p=0.8, top_k=10, min_p=0.02)
    candidates, probs = sampling_distribution(logits, params)
    expected = torch.zeros(50).index_add(0, candidates, probs)
    draft = int(candidates[1])
    verified = frequencies(lambda: verify_drafted(logits, params, draft, generator), 10_000, 50)
    sampled = frequencies(lambda: sample_adjusted(logits, params, generator), 10_000, 50)
    assert torch.allclose(verified, expected, atol=0.02)
    assert torch.allclose(sampled, expected, atol=0.02)
    assert verify_drafted(logits, GREEDY, draft, generator) == int(logits.argmax())


# --- drafts and their length ------------------------------------------------------------------


def test_the_draft_is_what_followed_the_latest_longest_match() -> None:
    index = NgramIndex([1, 2, 3, 4, 5, 9, 2, 3, 6, 7, 1, 2, 3])
    assert index.continuation(3) == [4, 5, 9]  # "1 2 3" came before 4 ("2 3" last before 6)
    index.extend([8])
    assert index.continuation(3) == []  # "2 3 8" and "3 8" never came before
    assert NgramIndex([7, 8, 1, 7, 8, 2, 7, 8]).continuation(2) == [2, 7]  # the latest "7 8"
    # Running into the end: text that repeats itself goes on repeating.
    assert NgramIndex([5, 1, 2, 1, 2, 1, 2]).continuation(5) == [1, 2, 1, 2, 1]


def test_the_draft_grows_while_accepted_and_shrinks_on_a_rejection() -> None:
    length = DraftLength()
    first = length.allowed()
    length.verified(first, first, saved_s=0.01)
    assert length.allowed() > first
    length.verified(length.allowed(), 1, saved_s=0.01)
    assert length.allowed() == 2


def test_drafting_pauses_where_verifying_costs_more_than_it_saves() -> None:
    drafter = LookupDrafter([1, 2, 3, 4] * 50)  # a text that repeats: every draft is right
    for _ in range(5):
        drafter.generated([1], 0, 0, seconds=0.010)  # plain steps of 10 ms
    verifications = 0
    for _ in range(60):
        draft = drafter.draft(8)
        verifications += bool(draft)
        # All accepted, but each verification took longer than plain steps for its tokens.
        seconds = 0.011 * (len(draft) + 1)
        drafter.generated([*draft, 9], len(draft), len(draft), seconds)
    assert MISSES_TO_PAUSE <= verifications <= MISSES_TO_PAUSE + 2
    assert drafter.length.allowed() == 0


def test_drafting_turns_itself_off_on_text_that_does_not_follow_its_context() -> None:
    rng = random.Random(0)
    # Text over 20 tokens: nearly every pair of tokens occurred before, so a draft is there
    # at almost every step, and the text never goes on as it did.
    drafter = LookupDrafter([rng.randrange(20) for _ in range(400)])
    drafted_at = []
    for step in range(1000):
        draft = drafter.draft(8)
        token = rng.randrange(20)
        if draft:
            drafted_at.append(step)
            while token == draft[0]:
                token = rng.randrange(20)
        drafter.generated([token], len(draft), 0)
    # MISSES_TO_PAUSE misses, then one try after each pause, each pause twice as long.
    assert MISSES_TO_PAUSE <= len(drafted_at) <= MISSES_TO_PAUSE + 6, drafted_at
    assert len([step for step in drafted_at if step >= 500]) <= 2


def test_the_setting_reaches_the_local_backend() -> None:
    assert llm_config(load_settings())["lookup_decoding"] is True
    off = load_settings({"lookup_decoding": False})
    assert llm_config(off)["lookup_decoding"] is False
