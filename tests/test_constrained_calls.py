"""Grammar-constrained tool calls in the local backend: on random weights every call parses and
fits its tool's schema; on the trained tiny model the grammar leaves a right call unchanged."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from qwen_agent.llm.schema import Message

from agent.backends.local import LocalQwen
from agent.backends.tool_choice import AUTO, NONE, REQUIRED, TOOL_CHOICE_KEY
from agent.engine import constrained
from agent.engine.constrained import ToolCallConstraint, grammar_tools
from agent.loop.call_parser import RepairingFnCallPrompt
from agent.testing.transcripts import load_tool_schemas, time_task

pytestmark = pytest.mark.slow

SEEDS = range(6)
SCHEMAS: dict[str, dict[str, Any]] = {
    "enum": {
        "type": "object",
        "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["unit"],
    },
    "nested-object": {
        "type": "object",
        "properties": {
            "place": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                "required": ["city"],
            }
        },
        "required": ["place"],
    },
    "arrays": {
        "type": "object",
        "properties": {
            "numbers": {"type": "array", "items": {"type": "number"}, "minItems": 1},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
        },
        "required": ["numbers"],
    },
    "numbers": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 1, "maximum": 10},
            "ratio": {"type": "number"},
        },
        "required": ["count", "ratio"],
    },
    "required-and-optional": {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "exact": {"type": "boolean"},
            "limit": {"type": ["integer", "null"]},
        },
        "required": ["query", "exact"],
    },
    "array-of-objects": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"id": {"type": "integer"}, "ok": {"type": "boolean"}},
                    "required": ["id", "ok"],
                },
            }
        },
        "required": ["items"],
    },
    "no-arguments": {"type": "object", "properties": {}, "required": []},
}


def function(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "description": f"The {name} tool.", "parameters": schema}


def local_llm(model: Path, constrain: bool = True, **generate: Any) -> LocalQwen:
    cfg = {"max_new_tokens": 64, "temperature": 0.7, "top_p": 0.8, "top_k": 20, **generate}
    llm = LocalQwen(
        {"model": str(model), "device": "cpu", "constrain": constrain, "generate_cfg": cfg}
    )
    llm.fncall_prompt = RepairingFnCallPrompt()
    return llm


def ask(llm: LocalQwen, question: str, functions: list[dict], choice: str, seed: int = 0) -> list:
    messages = [Message("system", "You are a helpful assistant."), Message("user", question)]
    cfg = {TOOL_CHOICE_KEY: choice, "seed": seed}
    return list(
        llm.chat(messages=messages, functions=functions, stream=False, extra_generate_cfg=cfg)
    )


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_random_weights_make_schema_valid_calls(tiny_gptq: Path, kind: str) -> None:
    llm = local_llm(tiny_gptq)
    offered = [function(f"tool_{kind}", SCHEMAS[kind]), function("other", SCHEMAS["enum"])]
    schemas = {f["name"]: f["parameters"] for f in offered}
    for seed in SEEDS:
        output = ask(llm, "Do it.", offered, REQUIRED, seed)
        calls = [m.function_call for m in output if m.function_call]
        assert calls, f"seed {seed}: no call in {output}"
        for call in calls:
            assert call.name in schemas, f"seed {seed}: {call.name!r}"
            arguments = json.loads(call.arguments)
            errors = list(Draft202012Validator(schemas[call.name]).iter_errors(arguments))
            assert not errors, f"seed {seed}: {arguments} -> {errors[0].message}"


def test_a_call_near_the_token_limit_is_steered_to_its_end(tiny_gptq: Path) -> None:
    offered = [function("search", SCHEMAS["required-and-optional"])]
    llm = local_llm(tiny_gptq, max_new_tokens=40)
    for seed in SEEDS:
        [message] = [m for m in ask(llm, "Search.", offered, REQUIRED, seed) if m.function_call]
        arguments = json.loads(message.function_call.arguments)
        assert not list(Draft202012Validator(offered[0]["parameters"]).iter_errors(arguments))


def trained_question() -> str:
    return time_task(random.Random(3)).user


def test_the_grammar_leaves_a_right_call_unchanged(tiny_trained_gptq: Path) -> None:
    greedy = {"temperature": 0.0, "max_new_tokens": 200}
    tools = load_tool_schemas()
    free = ask(local_llm(tiny_trained_gptq, False, **greedy), trained_question(), tools, AUTO)
    constrained_llm = local_llm(tiny_trained_gptq, True, **greedy)
    constrained = ask(constrained_llm, trained_question(), tools, AUTO)
    assert [m.function_call for m in free if m.function_call]
    assert [m.model_dump() for m in constrained] == [m.model_dump() for m in free]
    assert constrained_llm.usage.constrained_tokens > 10  # the call went through the grammar


def test_tools_off_bans_the_call_token(tiny_trained_gptq: Path) -> None:
    llm = local_llm(tiny_trained_gptq, True, temperature=0.0, max_new_tokens=60)
    output = ask(llm, trained_question(), load_tool_schemas(), NONE)
    assert not [m for m in output if m.function_call]
    assert "<tool_call>" not in "".join(str(m.content) for m in output)


def test_required_waits_for_the_end_of_thinking(tiny_gptq: Path) -> None:
    llm = local_llm(tiny_gptq)
    loaded = llm.loaded
    tools = grammar_tools(loaded.path, loaded.tokenizer, loaded.engine.vocab_size, loaded.stop_ids)
    constraint = ToolCallConstraint(
        tools, [function("a", SCHEMAS["enum"])], REQUIRED, thinking=True
    )
    assert constraint.allowed() is None  # thinking is free text
    constraint.advance(tools.ids.think_close)
    allowed = constraint.allowed()
    assert allowed is not None and allowed[tools.ids.call_open]
    assert not allowed[tools.ids.think_open] and int(allowed.sum()) < 10


def test_llguidances_tokenizer_is_built_only_when_a_grammar_needs_it(
    tiny_gptq: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Building it takes ~1 s: a free-text answer must not wait for it.
    monkeypatch.setattr(constrained, "_GRAMMAR_TOOLS", {})
    llm = local_llm(tiny_gptq, max_new_tokens=8)
    offered = [function("tool_enum", SCHEMAS["enum"])]
    loaded = llm.loaded
    tools = grammar_tools(loaded.path, loaded.tokenizer, loaded.engine.vocab_size, loaded.stop_ids)
    free = ask(llm, "Say something.", offered, NONE)
    assert free and not [m for m in free if m.function_call]
    assert tools._tokenizer is None
    called = ask(llm, "Do it.", offered, REQUIRED)
    assert [m for m in called if m.function_call] and tools._tokenizer is not None
