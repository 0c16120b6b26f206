"""`agent run --model-server URL` against a stub OpenAI-compatible server on 127.0.0.1."""

from pathlib import Path

import pytest

from tests.clirun import agent_cli, empty_mcp_config
from tests.clirun import json_events as events_of
from tests.stub_openai_server import StubOpenAIServer


@pytest.fixture
def no_mcp(tmp_path: Path) -> Path:
    return empty_mcp_config(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("reasoning_field", ["reasoning_content", "reasoning"])
def test_thinking_switch_sampling_and_reasoning_reach_the_user(
    tmp_path: Path, no_mcp: Path, reasoning_field: str
) -> None:
    replies = [("The user greets me.", "Hello from the server!")]
    with StubOpenAIServer(replies, reasoning_field=reasoning_field) as server:
        done = agent_cli(
            "run",
            "Hi",
            "--json",
            "--thinking",
            "--model-server",
            server.url,
            "--mcp-config",
            str(no_mcp),
            "--seed",
            "7",
            "--presence-penalty",
            "1.5",
            home=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    thinking = "".join(e["delta"] for e in events if e["type"] == "thinking")
    assert thinking == "The user greets me."
    assert [e["text"] for e in events if e["type"] == "answer"] == ["Hello from the server!"]
    assert events[-1]["status"] == "answered"
    (request,) = server.requests
    assert request["chat_template_kwargs"] == {"enable_thinking": True}
    assert (request["temperature"], request["top_p"], request["top_k"]) == (0.6, 0.95, 20)
    assert request["min_p"] == 0.0
    assert request["presence_penalty"] == 1.5
    assert request["seed"] == 7


@pytest.mark.slow
def test_no_thinking_preset_and_a_tool_call_round_trip(tmp_path: Path, no_mcp: Path) -> None:
    payload = '{"name": "code_interpreter", "arguments": {"code": "print(6*7)"}}'
    call = f"<tool_call>\n{payload}\n</tool_call>"
    replies = [("", call), ("", "The answer is 42.")]
    with StubOpenAIServer(replies) as server:
        done = agent_cli(
            "run",
            "What is 6*7?",
            "--json",
            "--model-server",
            server.url,
            "--mcp-config",
            str(no_mcp),
            home=tmp_path,
        )
    assert done.returncode == 0, done.stderr
    events = events_of(done.stdout)
    (tool_call,) = [e for e in events if e["type"] == "tool_call"]
    assert tool_call["name"] == "code_interpreter"
    assert tool_call["arguments"] == {"code": "print(6*7)"}
    (tool_result,) = [e for e in events if e["type"] == "tool_result"]
    assert tool_result["ok"] and tool_result["content"].strip() == "42"
    assert tool_result["call_id"] == tool_call["call_id"]
    first, second = server.requests
    assert first["chat_template_kwargs"] == {"enable_thinking": False}
    assert (first["temperature"], first["top_p"]) == (0.7, 0.8)
    assert "code_interpreter" in first["messages"][0]["content"]  # tool schema in the prompt
    assert "42" in second["messages"][-1]["content"]  # the tool result went back to the model


@pytest.mark.slow
def test_unreachable_server_is_one_clear_line(tmp_path: Path, no_mcp: Path) -> None:
    done = agent_cli(
        "run",
        "Hi",
        "--model-server",
        "http://127.0.0.1:9/v1",
        "--mcp-config",
        str(no_mcp),
        home=tmp_path,
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors and "http://127.0.0.1:9/v1" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_looping_server_model_is_stopped_by_the_step_limit(tmp_path: Path, no_mcp: Path) -> None:
    # A server has no grammar: a nameless call, then calls even with tools off.
    nameless = '<tool_call>\n{"arguments": {"code": "print(1)"}}\n</tool_call>'
    looping = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "1"}}\n</tool_call>'
    replies = [("", nameless), ("", looping), ("", looping)]
    with StubOpenAIServer(replies) as server:
        done = agent_cli(
            "run", "Loop.", "--json", "--model-server", server.url, "--mcp-config", str(no_mcp),
            "--max-steps", "2", "--require-tool", home=tmp_path,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr
    events = events_of(done.stdout)
    results = [e for e in events if e["type"] == "tool_result"]
    assert [r["ok"] for r in results] == [False, True]
    assert 'no "name"' in results[0]["content"]
    notices = [e["kind"] for e in events if e["type"] == "notice"]
    assert notices == ["step_limit", "no_answer"] and events[-1]["status"] == "no_answer"
    assert len(server.requests) == 3  # and no request carried our private tool-choice key
    assert all("agent_tool_choice" not in request for request in server.requests)
    assert "Tools are off now" in server.requests[-1]["messages"][-1]["content"]
