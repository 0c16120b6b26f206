"""agent.server.stream: Qwen3 output split into chat-completion deltas, alike for any chunking."""

from __future__ import annotations

import itertools
import json
import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from agent.server.stream import (
    Completion,
    Delta,
    OutputSplitter,
    ToolCallOut,
    split_all,
)

TAGS = ("<tool_call", "<think", "</think", "</tool_call")
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
NESTED_ARGUMENTS = (
    '{"path": "notes/a.json", "content": "{\\"k\\": [1, {\\"x\\": \\"}\\"}]} \\\\ done",'
    ' "expr": "a < b && c <t </b>", "options": {"mode": "w", "tags": ["é", "日本語", "{", "]",'
    ' "🎉", "\\u00e9\\n"], "depth": {"a": {"b": [[], {}]}}}, "n": -1.5e3, "ok": true,'
    ' "none": null}'
)


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    reasoning: str = ""
    content: str = ""
    calls: tuple[tuple[str, str], ...] = ()  # (name, arguments JSON text)
    repaired: int = 0
    unparsed: int = 0


CASES = [
    Case("plain", "The capital of France is Paris.", content="The capital of France is Paris."),
    Case(
        "thinking_answer",
        "<think>\nThe user asks for the capital.\n\nIt is Paris.\n</think>\n\nParis.",
        reasoning="The user asks for the capital.\n\nIt is Paris.",
        content="Paris.",
    ),
    Case("empty_think", "<think>\n\n</think>\n\nHello!", content="Hello!"),
    Case(
        "think_when_off",
        "\n\n<think>\nquick\n</think>\n\nHi there.\n",
        reasoning="quick",
        content="Hi there.",
    ),
    Case(
        "thinking_call",
        f"<think>\nI need the weather.\n</think>\n\n<tool_call>\n{WEATHER}\n</tool_call>",
        reasoning="I need the weather.",
        calls=(("get_weather", '{"city": "Paris"}'),),
    ),
    Case(
        "two_calls",
        f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n"
        '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}\n</tool_call>\n',
        calls=(("get_weather", '{"city": "Paris"}'), ("get_time", '{"timezone": "Europe/Paris"}')),
    ),
    Case(
        "call_inside_think",
        f"<think>\nLet me check the weather.\n<tool_call>\n{WEATHER}\n</tool_call>",
        reasoning="Let me check the weather.",
        calls=(("get_weather", '{"city": "Paris"}'),),
    ),
    Case(
        "text_around_call",
        f"Let me look.\n\n<tool_call>\n{WEATHER}\n</tool_call>\n\nI asked for the weather.",
        content="Let me look.\n\nI asked for the weather.",
        calls=(("get_weather", '{"city": "Paris"}'),),
    ),
    Case(
        "nested_arguments",
        '<tool_call>\n{"name": "write_file", "arguments": ' + NESTED_ARGUMENTS + "}\n</tool_call>",
        calls=(("write_file", NESTED_ARGUMENTS),),
    ),
    Case(
        "no_space_shape",
        '<tool_call>{"name":"f","arguments":{}}</tool_call>',
        calls=(("f", "{}"),),
    ),
    Case(
        "arguments_first",
        '<tool_call>\n{"arguments": {"city": "Paris"}, "name": "get_weather"}\n</tool_call>\nOK.',
        content="OK.",
        calls=(("get_weather", '{"city": "Paris"}'),),
        repaired=1,
    ),
    Case(
        "parameters",
        '<tool_call>\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n</tool_call>',
        calls=(("get_weather", '{"city": "Paris"}'),),
        repaired=1,
    ),
    Case(
        "json5",
        "<tool_call>\n{name: 'get_weather', arguments: {city: 'Paris',},}\n</tool_call>",
        calls=(("get_weather", '{"city": "Paris"}'),),
        repaired=1,
    ),
    Case(
        "raw_newline_trailing_comma",
        '<tool_call>\n{"name": "run", "arguments": {"code": "print(1)\nprint(2)", "x": True,'
        ' "y": [1, 2,], }}\n</tool_call>',
        calls=(("run", '{"code": "print(1)\\nprint(2)", "x": true, "y": [1, 2] }'),),
        repaired=1,
    ),
    Case(
        "open_at_end",
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
        content="Sure.",
        calls=(("get_weather", '{"city": "Par"}'),),
        repaired=1,
    ),
    Case(
        "open_unstreamed_at_end",
        '<tool_call>\n{"arguments": {"city": "Paris"}, "name": "get_weather"',
        calls=(("get_weather", '{"city": "Paris"}'),),
        repaired=1,
    ),
    Case(
        "open_key_at_end",
        '<tool_call>\n{"name": "f", "arguments": {"a": [1, 2], "b',
        calls=(("f", '{"a": [1, 2], "b": null}'),),
        repaired=1,
    ),
    Case(
        "unparsed",
        "<tool_call>\nI will call the weather tool.\n</tool_call>\nSorry.",
        content="Sorry.",
        unparsed=1,
    ),
    Case(
        "texts_joined",
        "A<tool_call>\nnot a call\n</tool_call>\n\nB </think> C\n",
        content="A\n\nB C",
        unparsed=1,
    ),
    Case(
        "less_than",
        "If a < b and b <c then a < c; <b>bold</b>, x<t",
        content="If a < b and b <c then a < c; <b>bold</b>, x<t",
    ),
]


def counter_ids() -> Callable[[], str]:
    """Call ids call_0, call_1, ... so two runs can be compared."""
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def stream(text: str, cuts: list[int]) -> tuple[list[Delta], OutputSplitter]:
    """The deltas of `text` fed in the pieces between `cuts`, then finished."""
    splitter = OutputSplitter(counter_ids())
    deltas: list[Delta] = []
    bounds = [0, *cuts, len(text)]
    for start, end in itertools.pairwise(bounds):
        deltas += splitter.feed(text[start:end])
    return deltas + splitter.finish(), splitter


def accumulate(deltas: list[Delta]) -> Completion:
    completion = Completion()
    for delta in deltas:
        completion.add(delta)
    return completion


def check_deltas(deltas: list[Delta], expected: Completion) -> None:
    """No tags in text, no empty deltas, first call deltas complete, fragments valid JSON."""
    fragments: dict[int, str] = {}
    for delta in deltas:
        if delta.kind in ("reasoning", "content"):
            assert delta.text and not any(tag in delta.text for tag in TAGS), delta
            assert delta.call_id is None and delta.name is None
            continue
        assert delta.kind == "tool_call"
        if delta.name is not None:
            assert delta.index == len(fragments) and delta.call_id and delta.text == ""
            fragments[delta.index] = ""
        else:
            assert delta.text and delta.call_id is None
            assert delta.index == len(fragments) - 1  # the call being streamed
            fragments[delta.index] += delta.text
    assert len(fragments) == len(expected.tool_calls)
    for index, call in enumerate(expected.tool_calls):
        assert json.loads(fragments[index]) == json.loads(call.arguments)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_one_shot(case: Case) -> None:
    splitter = OutputSplitter(counter_ids())
    completion = accumulate(splitter.feed(case.text) + splitter.finish())
    calls = [ToolCallOut(f"call_{i}", name, args) for i, (name, args) in enumerate(case.calls)]
    assert completion == Completion(case.reasoning, case.content, calls)
    assert completion == split_all(case.text, counter_ids())
    for call in completion.tool_calls:
        assert isinstance(json.loads(call.arguments), dict)
    assert (splitter.repaired_calls, splitter.unparsed_calls) == (case.repaired, case.unparsed)
    assert splitter.held_tag_text == int(case.text.endswith("<t"))  # held at the end of feed


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_any_chunking_gives_the_one_shot_result(case: Case) -> None:
    expected = split_all(case.text, counter_ids())
    rng = random.Random(zlib.crc32(case.name.encode()))
    size = len(case.text)
    chunkings = [list(range(1, size))]  # one character at a time
    for _ in range(200):
        count = rng.randint(1, min(size - 1, rng.choice((3, 10, 40))))
        chunkings.append(sorted(rng.sample(range(1, size), count)))
    for cuts in chunkings:
        deltas, splitter = stream(case.text, cuts)
        assert accumulate(deltas) == expected, cuts
        check_deltas(deltas, expected)
        assert (splitter.repaired_calls, splitter.unparsed_calls) == (case.repaired, case.unparsed)


def test_partial_tag_is_held_back_and_arguments_stream_before_the_call_closes() -> None:
    splitter = OutputSplitter(counter_ids())
    assert splitter.feed("Hello <tool") == [Delta("content", "Hello")]
    assert splitter.held_tag_text == 1
    assert splitter.feed('_call>\n{"name": "search", "arguments": {"q": "a <') == [
        Delta("tool_call", "", 0, "call_0", "search"),
        Delta("tool_call", '{"q": "a ', 0),
    ]
    assert splitter.held_tag_text == 2
    assert splitter.feed(' b"}}\n</tool_') == [Delta("tool_call", '< b"}', 0)]
    assert splitter.feed("call>\n\nDone") == [Delta("content", " Done")]  # joined by the gap
    assert splitter.finish() == []
    assert splitter.held_tag_text == 3
    assert (splitter.repaired_calls, splitter.unparsed_calls) == (0, 0)


def test_not_a_tag_after_all_is_released_as_text() -> None:
    splitter = OutputSplitter()
    assert splitter.feed("<thi") == []
    assert splitter.feed("s is fine") == [Delta("content", "<this is fine")]


def test_default_call_ids() -> None:
    ids = [call.id for call in split_all(CASES[5].text).tool_calls]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", call_id) for call_id in ids)


FUZZ_PIECES = (
    *("<think>", "</think>", "<tool_call>", "</tool_call>", "<", "</", "<t", "\n", " ", "é"),
    *("{", "}", "[", "]", '"', "\\", "\\u00", "\\n", ",", ":", "1", "-", "true", "True", "'"),
    *('"name"', '"arguments"', '"f"', '{"name": "f", "arguments": ', '{"a": ', "x"),
)


def test_random_texts_keep_every_rule() -> None:
    rng = random.Random(7)
    for _ in range(300):
        text = "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(2, 30)))
        expected = split_all(text, counter_ids())
        for _ in range(3):
            cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, len(text) - 1)))
            deltas, _ = stream(text, cuts)
            assert accumulate(deltas) == expected, (text, cuts)
            check_deltas(deltas, expected)
