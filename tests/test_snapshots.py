"""The runner's snapshot conversion: recorded `Assistant.run()` yields into exact events."""

import json
from pathlib import Path

from agent.events import Answer, Event, Text, Thinking, ToolCall, ToolResult
from agent.loop.snapshots import SnapshotConverter, split_content
from agent.tools.invoke import ToolOutcome

FIXTURE = Path(__file__).parent / "fixtures" / "qwen_agent_run_snapshots.jsonl"


def convert(snapshots: list[list[dict]]) -> list[Event]:
    converter = SnapshotConverter()
    events: list[Event] = []
    for snapshot in snapshots:
        events += converter.feed(snapshot)
    return events + converter.finish()


def merged(events: list[Event]) -> list[tuple]:
    """Consecutive deltas of one kind joined, so a sequence reads like what a user saw."""
    out: list[tuple] = []
    for event in events:
        if isinstance(event, Thinking | Text):
            if out and out[-1][0] == event.type:
                out[-1] = (event.type, out[-1][1] + event.delta)
                continue
            out.append((event.type, event.delta))
        elif isinstance(event, ToolCall):
            out.append(("tool_call", event.call_id, event.name, event.arguments))
        elif isinstance(event, ToolResult):
            out.append(("tool_result", event.call_id, event.name, event.ok))
        elif isinstance(event, Answer):
            out.append(("answer", event.text))
    return out


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


def call(name: str, arguments: str) -> dict:
    return {
        "role": "assistant",
        "content": "",
        "function_call": {"name": name, "arguments": arguments},
    }


def result(name: str, content: str) -> dict:
    return {"role": "function", "name": name, "content": content}


def test_recorded_run_gives_exactly_the_expected_events() -> None:
    snapshots = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    events = convert(snapshots)
    answer = "The UTC time was fetched, the page says the secret number is 4242, and 2**10 = 1024."
    assert merged(events) == [
        ("thinking", "The user wants the time, a page and a computation. First the time."),
        ("text", "Let me check the time."),
        ("tool_call", "call_1", "time-get_current_time", {"timezone": "UTC"}),
        ("tool_result", "call_1", "time-get_current_time", True),
        ("thinking", "Now fetch the page."),
        ("tool_call", "call_2", "fetch-fetch", {"url": "http://127.0.0.1:8765/page.html"}),
        ("tool_result", "call_2", "fetch-fetch", True),
        ("thinking", "Now compute."),
        ("tool_call", "call_3", "code_interpreter", {"code": "print(2**10)"}),
        ("tool_result", "call_3", "code_interpreter", True),
        ("thinking", "I have everything."),
        ("text", answer),
        ("answer", answer),
    ]
    code_result = [e for e in events if isinstance(e, ToolResult)][-1]
    assert "1024" in code_result.content
    assert not any("<tool_call" in getattr(e, "delta", "") for e in events)


def test_partial_tool_call_tag_is_never_shown_and_shrinking_loses_nothing() -> None:
    snapshots = [
        [assistant("Sure.")],
        [assistant("Sure. <tool")],
        [assistant('Sure. <tool_call>\n{"name": "x')],
        [assistant("Sure.")],  # Qwen-Agent cut the partial call away
        [assistant("Sure."), call("time-get_current_time", '{"timezone": "Asia/Tok')],
        [assistant("Sure."), call("time-get_current_time", '{"timezone": "Asia/Tokyo"}}\n</t')],
        [assistant("Sure."), call("time-get_current_time", '{"timezone": "Asia/Tokyo"}')],
        [
            assistant("Sure."),
            call("time-get_current_time", '{"timezone": "Asia/Tokyo"}'),
            result("time-get_current_time", "12:00"),
        ],
        [
            assistant("Sure."),
            call("time-get_current_time", '{"timezone": "Asia/Tokyo"}'),
            result("time-get_current_time", "12:00"),
            assistant("It is 12:00 in To"),
        ],
        [
            assistant("Sure."),
            call("time-get_current_time", '{"timezone": "Asia/Tokyo"}'),
            result("time-get_current_time", "12:00"),
            assistant("It is 12:00 in Tokyo."),
        ],
    ]
    assert merged(convert(snapshots)) == [
        ("text", "Sure."),
        ("tool_call", "call_1", "time-get_current_time", {"timezone": "Asia/Tokyo"}),
        ("tool_result", "call_1", "time-get_current_time", True),
        ("text", "It is 12:00 in Tokyo."),
        ("answer", "It is 12:00 in Tokyo."),
    ]


def test_message_replaced_by_a_call_at_the_same_index_emits_no_junk() -> None:
    snapshots = [
        [assistant("<tool_")],
        [assistant('<tool_call>\n{"na')],
        [call("code_interpreter", "")],
        [call("code_interpreter", '{"code": "1+1"}')],
        [call("code_interpreter", '{"code": "1+1"}'), result("code_interpreter", "2")],
        [
            call("code_interpreter", '{"code": "1+1"}'),
            result("code_interpreter", "2"),
            assistant("2"),
        ],
    ]
    assert merged(convert(snapshots)) == [
        ("tool_call", "call_1", "code_interpreter", {"code": "1+1"}),
        ("tool_result", "call_1", "code_interpreter", True),
        ("text", "2"),
        ("answer", "2"),
    ]


def test_no_duplicates_when_snapshots_repeat() -> None:
    snapshot = [
        assistant("Hello"),
    ]
    events = convert([snapshot, snapshot, [assistant("Hello there")], [assistant("Hello there")]])
    assert merged(events) == [("text", "Hello there"), ("answer", "Hello there")]
    assert [e.delta for e in events if isinstance(e, Text)] == ["Hello", " there"]


def test_thinking_is_never_answer_text() -> None:
    events = convert(
        [
            [assistant("<think>\nsecret plan")],
            [assistant("<think>\nsecret plan\n</think>\n\nDone.")],
        ]
    )
    assert merged(events) == [("thinking", "secret plan"), ("text", "Done."), ("answer", "Done.")]


def test_unfinished_think_tag_is_held_back() -> None:
    assert split_content("<think>\nabc</thi", final=False) == ("abc", "")
    assert split_content("<thi", final=False) == ("", "")
    assert split_content("<think>\nabc</think>\nHi <tool_ca", final=False) == ("abc", "Hi")


def test_reasoning_content_from_a_server_is_thinking() -> None:
    msg = {"role": "assistant", "content": "", "reasoning_content": "let me see"}
    events = convert([[msg], [msg, assistant("Yes.")]])
    assert merged(events) == [("thinking", "let me see"), ("text", "Yes."), ("answer", "Yes.")]


def test_outcomes_give_error_flags_and_durations() -> None:
    converter = SnapshotConverter()
    converter.feed([call("t", "{}")])
    converter.finalize_last()
    converter.add_outcome(ToolOutcome(content="Error: boom", ok=False, duration_s=0.25))
    (event,) = converter.feed([call("t", "{}"), result("t", "Error: boom")])
    assert isinstance(event, ToolResult)
    assert (event.ok, event.duration_s, event.content) == (False, 0.25, "Error: boom")


def test_run_without_answer_has_no_answer_event() -> None:
    events = convert([[call("t", "{}")], [call("t", "{}"), result("t", "x")]])
    assert not any(isinstance(e, Answer) for e in events)
