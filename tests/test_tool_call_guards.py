"""Repair and guards in the tool loop, for every backend: recorded model outputs (what a small
model really writes) turned into the events and tool results a user sees."""

from __future__ import annotations

import json
from typing import Any

import pytest
from qwen_agent.tools.base import BaseTool
from transformers import PreTrainedTokenizerFast

from agent.backends.tool_choice import AUTO, NONE, REQUIRED
from agent.config import Settings
from agent.events import Answer, Event, Notice, RunFinished, Text, ToolCall, ToolResult
from agent.loop.assistant import build_assistant
from agent.loop.runner import RunInfo, run_events
from agent.testing.transcripts import ScriptedLLM
from agent.tools.toolset import ToolEntry, Toolset


class WorldClock(BaseTool):
    """A real tool with a schema that has a required argument, an enum and an integer."""

    name = "world_clock"
    description = "The time in a time zone."
    parameters = {
        "type": "object",
        "properties": {
            "timezone": {"type": "string"},
            "style": {"type": "string", "enum": ["12h", "24h"]},
            "offset_hours": {"type": "integer"},
        },
        "required": ["timezone"],
    }

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def call(self, params: str | dict, **kwargs: Any) -> str:
        args = self._verify_json_format_args(params)
        self.calls.append(args)
        return f"It is 12:{len(self.calls):02d} in {args['timezone']}."


def call(body: str) -> str:
    return f"<tool_call>\n{body}\n</tool_call>"


def run(
    tokenizer: PreTrainedTokenizerFast, outputs: list[str], **settings: Any
) -> tuple[list[Event], ScriptedLLM, WorldClock]:
    clock = WorldClock()
    llm = ScriptedLLM(tokenizer, list(outputs), thinking=False)
    toolset = Toolset([ToolEntry(clock, "test")])
    assistant = build_assistant(Settings(**settings), llm, toolset)
    info = RunInfo(model="scripted", backend="scripted", thinking=False, tools=["world_clock"])
    events = list(run_events(assistant, [{"role": "user", "content": "What time is it?"}], info))
    assert not llm.outputs, "every recorded output should have been used"
    return events, llm, clock


def results(events: list[Event]) -> list[tuple[bool, str]]:
    return [(e.ok, e.content) for e in events if isinstance(e, ToolResult)]


def answer(events: list[Event]) -> str:
    return next((e.text for e in events if isinstance(e, Answer)), "")


def status(events: list[Event]) -> str:
    return next(e.status for e in events if isinstance(e, RunFinished))


DOUBLE_ENCODED = json.dumps(json.dumps({"timezone": "UTC", "offset_hours": 2}))
GOOD_CALL = call('{"name": "world_clock", "arguments": {"timezone": "Asia/Tokyo"}}')


def test_a_call_without_a_name_gets_an_error_result_naming_the_tools(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    nameless = call('{"arguments": {"timezone": "Asia/Tokyo"}}')
    events, _, clock = run(qwen3_tokenizer, [nameless, GOOD_CALL, "It is 12:01."])
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.name for c in calls] == ["", "world_clock"]
    (ok, content), second = results(events)
    assert not ok and 'no "name"' in content and "world_clock" in content
    assert second == (True, "It is 12:01 in Asia/Tokyo.")
    assert answer(events) == "It is 12:01." and status(events) == "answered"


def test_a_raw_newline_inside_a_json_string_still_parses(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    broken = call('{"name": "world_clock", "arguments": {"timezone": "Europe/\nParis"}}')
    events, _, clock = run(qwen3_tokenizer, [broken, "Done."])
    assert clock.calls == [{"timezone": "Europe/\nParis"}]
    assert [e.arguments for e in events if isinstance(e, ToolCall)] == [
        {"timezone": "Europe/\nParis"}
    ]


def test_text_after_the_call_is_kept(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    events, llm, _ = run(qwen3_tokenizer, [GOOD_CALL + "\nLet me check the clock.", "Noon."])
    texts = "".join(e.delta for e in events if isinstance(e, Text))
    assert "Let me check the clock." in texts
    assert "Let me check the clock." in llm.prompts[1]  # and the model sees it next turn


@pytest.mark.parametrize(
    ("name", "hint"),
    [("world_clok", "Did you mean 'world_clock'?"), ("clock", "Did you mean 'world_clock'?")],
)
def test_an_unknown_tool_is_answered_with_the_closest_names(
    qwen3_tokenizer: PreTrainedTokenizerFast, name: str, hint: str
) -> None:
    wrong = call(f'{{"name": "{name}", "arguments": {{"timezone": "UTC"}}}}')
    events, _, clock = run(qwen3_tokenizer, [wrong, "Sorry."])
    [(ok, content)] = results(events)
    assert not ok and f"no tool named {name!r}" in content and hint in content
    assert clock.calls == []


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ("{}", "argument `timezone` is required"),
        ('{"timezone": "UTC", "style": "36h"}', 'argument `style` must be one of "12h", "24h"'),
        ('{"timezone": 5}', "argument `timezone` must be a string, not 5"),
        (
            '{"timezone": "UTC", "offset_hours": "two"}',
            "argument `offset_hours` must be an integer",
        ),
        ('"UTC"', 'must be a JSON object such as {"timezone": ..., "style": ..., '),
        ("[1, 2]", "must be a JSON object such as"),
    ],
)
def test_invalid_arguments_get_a_short_error_the_model_can_act_on(
    qwen3_tokenizer: PreTrainedTokenizerFast, arguments: str, error: str
) -> None:
    bad = call(f'{{"name": "world_clock", "arguments": {arguments}}}')
    events, _, clock = run(qwen3_tokenizer, [bad, "Sorry."])
    [(ok, content)] = results(events)
    assert not ok and error in content, content
    assert content.startswith("Error: ") and len(content) < 200
    assert clock.calls == []


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "world_clock", "arguments": {"timezone": "UTC", "offset_hours": "2"}}',
        '{"name": "world_clock", "parameters": {"timezone": "UTC", "offset_hours": 2}}',
        '{"name": "world_clock", "arguments": ' + DOUBLE_ENCODED + "}",
        "{'name': 'world_clock', 'arguments': {'timezone': 'UTC', 'offset_hours': 2,},}",
    ],
    ids=["number-as-string", "parameters-key", "double-encoded", "json5"],
)
def test_slips_a_small_model_makes_are_repaired(
    qwen3_tokenizer: PreTrainedTokenizerFast, body: str
) -> None:
    events, _, clock = run(qwen3_tokenizer, [call(body), "Done."])
    assert clock.calls == [{"timezone": "UTC", "offset_hours": 2}]
    assert results(events)[0][0]


def test_a_call_cut_off_at_the_token_limit_is_closed_and_run(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    cut = '<tool_call>\n{"name": "world_clock", "arguments": {"timezone": "Asia/Tok'
    events, _, clock = run(qwen3_tokenizer, [cut, "Done."])
    assert clock.calls == [{"timezone": "Asia/Tok"}]


def test_identical_calls_are_stopped_after_the_repeat_limit(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    events, _, clock = run(
        qwen3_tokenizer, [GOOD_CALL, GOOD_CALL, GOOD_CALL, "It is 12:02."], max_repeats=2
    )
    assert len(clock.calls) == 2
    third = results(events)[2]
    assert not third[0] and "already ran 2 times with these same arguments" in third[1]
    assert answer(events) == "It is 12:02."


def test_the_step_limit_ends_a_looping_model_with_a_final_answer(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    looping = [
        call(f'{{"name": "world_clock", "arguments": {{"timezone": "Zone/{i}"}}}}')
        for i in range(3)
    ]
    events, llm, clock = run(qwen3_tokenizer, [*looping, "It is 12:03 in Zone/2."], max_steps=3)
    assert len(clock.calls) == 3
    assert llm.tool_choices == [AUTO, AUTO, AUTO, NONE]
    assert "Tools are off now" in llm.prompts[-1]
    notices = [e for e in events if isinstance(e, Notice)]
    assert [n.kind for n in notices] == ["step_limit"]
    assert answer(events) == "It is 12:03 in Zone/2." and status(events) == "answered"


def test_a_model_that_calls_even_with_tools_off_ends_with_a_clear_failure(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    # What a remote server (no grammar) may do: the call in the last step is not run.
    events, llm, clock = run(qwen3_tokenizer, [GOOD_CALL, GOOD_CALL], max_steps=1)
    assert len(clock.calls) == 1
    assert [e.kind for e in events if isinstance(e, Notice)] == ["step_limit", "no_answer"]
    assert status(events) == "no_answer"


def test_require_tool_asks_only_the_first_model_call_for_a_call(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    _, llm, _ = run(qwen3_tokenizer, [GOOD_CALL, "Noon."], require_tool=True)
    assert llm.tool_choices == [REQUIRED, AUTO]
