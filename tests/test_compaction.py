"""Keeping a conversation inside the context window: older turns compacted into a summary the
model writes, older tool results cut inside a run, the whole results kept in the history, the
level shown. Scripted model replies (the StubOpenAIServer test double) make every step exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qwen_agent.llm.schema import FUNCTION, USER, Message

from agent.loop.compaction import SUMMARY_MARK, SUMMARY_PROMPT, compact_turns, cut_old_results
from tests.chatpty import ChatTerminal
from tests.clirun import agent_cli, empty_mcp_config, json_events
from tests.stub_openai_server import StubOpenAIServer

NOTE = "note " * 1200  # ~1,200 tokens


def call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def turns(count: int) -> list[dict[str, str]]:
    messages = []
    for n in range(count):
        messages += [
            {"role": "user", "content": f"question {n}: {NOTE}"},
            {"role": "assistant", "content": f"answer {n}"},
        ]
    return messages


def test_under_the_threshold_nothing_changes() -> None:
    messages = [*turns(2), {"role": "user", "content": "now"}]
    kept = compact_turns(messages, reserve=3_000, compact_at=0.8, summarize=lambda text: "x")
    assert kept.messages == messages and kept.compacted_turns == 0


def test_older_turns_become_a_summary_and_the_latest_stay_whole() -> None:
    seen: list[str] = []

    def summarize(text: str) -> str:
        seen.append(text)
        return "They asked five questions."

    messages = [*turns(5), {"role": "user", "content": "the current question"}]
    # 0.3 of the window minus the reserve leaves room for about four of the five old turns.
    done = compact_turns(messages, reserve=5_000, compact_at=0.3, summarize=summarize)
    assert 1 <= done.compacted_turns < 5 and done.compacted_tokens > 0
    assert "question 0" in seen[0] and "answer 0" in seen[0]
    first = done.messages[0]
    assert first["role"] == "user" and first["content"].startswith(SUMMARY_MARK)
    assert "They asked five questions." in first["content"]
    assert done.messages[-1] == {"role": "user", "content": "the current question"}
    assert not any("question 0:" in str(m["content"]) for m in done.messages)


def test_older_tool_results_are_cut_in_a_run_but_never_the_last() -> None:
    messages = [Message(USER, "go")]
    page = " ".join(str(number) for number in range(3_000))  # ~6,000 tokens
    messages += [Message(FUNCTION, f"result {n}: {page}", name="t") for n in range(3)]
    cut = cut_old_results(messages, budget=8_000)
    assert cut == 2
    assert "cut to keep the conversation within the context window" in messages[1].content
    assert messages[-1].content.endswith(page)


@pytest.mark.slow
def test_a_chat_past_the_threshold_is_compacted_said_and_shown(tmp_path: Path) -> None:
    """With `compact_at` 0.15, the third turn passes it: the model writes a summary of the
    first turns, the notice says so, the model gets the summary instead of them, `/context`
    shows the level, and the history keeps the notice."""
    replies = [
        ("", "First noted."),
        ("", "Second noted."),
        ("", "The user sent two long notes about alpha and beta."),
        ("", "Third noted."),
    ]
    with StubOpenAIServer(replies) as server:
        args = ["--model-server", server.url, "--mcp-config", str(empty_mcp_config(tmp_path))]
        env = {"AGENT_COMPACT_AT": "0.15"}
        chat = ChatTerminal(*args, "--no-tools", home=tmp_path, env=env)
        chat.turn(f"alpha {NOTE}", "First noted.")
        chat.turn(f"beta {NOTE}", "Second noted.")
        chat.turn(f"gamma {NOTE}", "Third noted.")
        shown = chat.turn("/context", "compacted into a summary at 15%")
        assert chat.leave() == 0
    assert "compacted into a summary the model wrote" in chat.screen
    assert "The user sent two long notes" in chat.screen
    assert "context: " in shown and " of 32,768 tokens (" in shown
    summary_request, third = server.requests[2], server.requests[3]
    assert summary_request["messages"][0]["content"] == SUMMARY_PROMPT
    assert "alpha" in summary_request["messages"][1]["content"]
    sent = json.dumps(third["messages"])
    assert "The user sent two long notes" in sent and "alpha note" not in sent
    assert "gamma" in sent
    newest = json.loads(agent_cli("runs", "list", "--json", home=tmp_path).stdout.splitlines()[0])
    shown = json_events(agent_cli("runs", "show", newest["id"], "--json", home=tmp_path).stdout)
    assert [e["kind"] for e in shown if e["type"] == "notice"] == ["compacted"]
    assert [e["type"] for e in shown][:2] == ["run_started", "notice"]


@pytest.mark.slow
def test_a_long_tool_result_is_cut_for_the_model_and_kept_whole(tmp_path: Path) -> None:
    tool = tmp_path / "big.py"
    tool.write_text(
        "from agent.plugins import tool\n\n\n@tool\ndef big() -> str:\n"
        '    """A long page."""\n    return "word " * 6000\n'
    )
    replies = [("", call("big", {})), ("", "Done.")]
    with StubOpenAIServer(replies) as server:
        done = agent_cli(
            "run", "--json", "--model-server", server.url, "--mcp-config",
            str(empty_mcp_config(tmp_path)), "--tool", str(tool), "--tools", "big", "read it",
            home=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    result = next(e for e in events if e["type"] == "tool_result")
    assert len(result["uncut"]) == 30_000 and len(result["content"]) < 20_200
    assert "the whole result is kept in the run history" in result["content"]
    assert "the whole result is kept" in json.dumps(server.requests[1]["messages"])
    assert events[-1]["context"]["percent"] >= 1 and events[-1]["context"]["window"] == 32_768
    run_id = json.loads(agent_cli("runs", "list", "--json", home=tmp_path).stdout)["id"]
    shown = json_events(agent_cli("runs", "show", run_id, "--json", home=tmp_path).stdout)
    assert len(next(e for e in shown if e["type"] == "tool_result")["uncut"]) == 30_000
