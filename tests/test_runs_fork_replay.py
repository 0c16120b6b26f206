"""`agent runs steps|fork|resume|replay` on runs recorded for real: scripted model replies from
a TEST DOUBLE of an OpenAI-compatible server, a plugin tool written here (its output changed
between recording and replay), the shipped calculator, a run killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pexpect
import pytest

from agent.history.store import History
from agent.history.transcript import before_step, call_message, split_pending
from tests.clirun import agent_argv, agent_cli, agent_env, empty_mcp_config, json_events
from tests.stub_openai_server import StubOpenAIServer

WEATHER_TOOL = '''
import json
import time

from agent.plugins import ToolError, tool


@tool
def weather(city: str) -> str:
    """The weather in a city now.

    Args:
        city: the city's name
    """
    if "{sky}" == "broken":
        raise ToolError("the weather service is down")
    return json.dumps({{"city": city, "sky": "{sky}", "datetime": time.time()}})
'''
SLOW_TOOL = '''
import time
from pathlib import Path

from agent.plugins import tool


@tool
def slow(note: str) -> str:
    """Wait while the test holds it.

    Args:
        note: anything
    """
    while Path({hold!r}).exists():
        time.sleep(0.05)
    return "waited for " + note
'''
PROMPT = "Weather in Tokyo, and 6*7?"


def call(name: str, arguments: dict[str, Any]) -> tuple[str, str]:
    """A scripted model reply that calls `name`."""
    payload = json.dumps({"name": name, "arguments": arguments})
    return ("", f"<tool_call>\n{payload}\n</tool_call>")


def weather_tool(home: Path, sky: str) -> Path:
    path = home / "weather.py"
    path.write_text(WEATHER_TOOL.format(sky=sky))
    return path


def tool_args(home: Path, tool: Path, tools: str) -> list[str]:
    return ["--mcp-config", str(empty_mcp_config(home)), "--tool", str(tool), "--tools", tools]


def listed(home: Path) -> list[dict[str, Any]]:
    done = agent_cli("runs", "list", "--json", home=home)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def record_weather_run(home: Path) -> dict[str, Any]:
    """A finished run that called weather, then the calculator, then answered."""
    replies = [
        call("weather", {"city": "Tokyo"}),
        call("calculator", {"expression": "6*7"}),
        ("", "Sunny in Tokyo; 6*7 is 42."),
    ]
    args = tool_args(home, weather_tool(home, "sunny"), "weather,calculator")
    with StubOpenAIServer(replies) as server:
        done = agent_cli("run", "--model-server", server.url, *args, PROMPT, home=home)
    assert done.returncode == 0, done.stderr
    (run,) = listed(home)
    return run


def said(messages: list[dict[str, Any]]) -> list[str]:
    """What a model request's messages say, the system prompt left out."""
    return [m["content"] for m in messages if m["role"] != "system"]


@pytest.mark.slow
def test_steps_and_fork_before_a_step_and_from_the_end(
    tmp_path: Path, service: dict[str, str]
) -> None:
    source = record_weather_run(tmp_path)

    steps = agent_cli("runs", "steps", source["id"], home=tmp_path)
    assert steps.returncode == 0, steps.stderr
    header, *lines = steps.stdout.splitlines()
    assert header.split() == ["step", "tool", "arguments", "result"]
    assert lines[0].split()[:3] == ["1", "weather", '{"city":']
    assert lines[1].split()[:3] == ["2", "calculator", '{"expression":']
    assert lines[1].endswith("ok: 42")

    # Before step 2: the model has the weather call and its result, and decides again.
    with StubOpenAIServer([("", "Only the weather, then: sunny.")]) as server:
        done = agent_cli(
            "runs", "fork", source["id"], "--at", "2", "--json", "--model-server", server.url,
            home=tmp_path, env=service,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "running in this process" not in done.stderr  # the service, when it is on
    answer = json_events(done.stdout)[-2]
    assert answer == {"type": "answer", "text": "Only the weather, then: sunny."}
    (sent,) = [request["messages"] for request in server.requests]
    assert said(sent)[0] == PROMPT
    assert '"name": "weather"' in said(sent)[1] and '"sky": "sunny"' in said(sent)[2]
    assert len(said(sent)) == 3  # it ends with the weather's result: no calculator call
    runs = {run["id"]: run for run in listed(tmp_path)}
    (forked,) = [run for run in runs.values() if run["origin"] == "fork"]
    assert (forked["origin_run"], forked["origin_step"], forked["prompt"]) == (
        source["id"],
        2,
        PROMPT,
    )
    assert forked["conversation_id"] != source["conversation_id"]
    assert forked["status"] == "answered" and f"run {forked['id']}" in done.stderr
    shown = agent_cli("runs", "show", forked["id"], home=tmp_path)
    assert shown.stdout.startswith(f"(fork of run {source['id']}, before step 2)")
    with History(tmp_path / "history.sqlite3") as history:
        kept = history.messages(forked["conversation_id"])
    assert [m.get("role") for m in kept] == ["user", "assistant", "function", "assistant"]
    assert kept[-1]["content"] == "Only the weather, then: sunny."

    # From the end, with a new prompt: the whole run, then the new question.
    with StubOpenAIServer([("", "Rainy in Paris.")]) as server:
        done = agent_cli(
            "runs", "fork", source["id"], "and now in Paris?", "--model-server", server.url,
            home=tmp_path, env=service,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Rainy in Paris." in done.stdout
    (sent,) = [request["messages"] for request in server.requests]
    assert said(sent)[0] == PROMPT and said(sent)[-2:] == [
        "Sunny in Tokyo; 6*7 is 42.",
        "and now in Paris?",
    ]
    (from_end,) = [r for r in listed(tmp_path) if r["origin"] == "fork" and r["id"] not in runs]
    assert from_end["prompt"] == "and now in Paris?" and from_end["origin_step"] is None


@pytest.mark.slow
def test_fork_mistakes_are_one_line(tmp_path: Path) -> None:
    source = record_weather_run(tmp_path)
    for args, says in (
        (["--at", "3"], "--at 3: the run has 2 tool calls (steps 1 to 2"),
        ([], "ended with its answer: give a prompt"),
        (["--at", "0"], "Invalid value for '--at'"),
    ):
        done = agent_cli("runs", "fork", source["id"], *args, home=tmp_path)
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert len(listed(tmp_path)) == 1  # nothing was started


def record_killed_run(home: Path) -> tuple[dict[str, Any], Path]:
    """A run killed (SIGKILL) while its tool call ran: the history has it as interrupted."""
    hold = home / "hold"
    hold.touch()
    tool = home / "slow.py"
    tool.write_text(SLOW_TOOL.format(hold=str(hold)))
    with StubOpenAIServer([call("slow", {"note": "the kettle"})]) as server:
        argv = agent_argv(
            "run", "--json", "--model-server", server.url, *tool_args(home, tool, "slow"),
            "Wait for the kettle.",
        )  # fmt: skip
        process = subprocess.Popen(
            argv, env=agent_env(home), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            if json.loads(line)["type"] == "tool_call":
                break
        process.send_signal(signal.SIGKILL)
        process.wait()
    hold.unlink()
    (run,) = listed(home)
    assert run["status"] == "interrupted"
    return run, tool


@pytest.mark.slow
def test_resume_an_interrupted_run(tmp_path: Path, service: dict[str, str]) -> None:
    source, _ = record_killed_run(tmp_path)
    steps = agent_cli("runs", "steps", source["id"], home=tmp_path)
    assert "1  slow" in steps.stdout and "did not return" in steps.stdout

    # No terminal to ask and no --yes: refused, in one line, nothing run.
    refused = agent_cli("runs", "resume", source["id"], home=tmp_path, env=service)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "add --yes to allow that" in refused.stderr
    assert 'slow {"note": "the kettle"}' in refused.stderr
    assert len(listed(tmp_path)) == 1

    with StubOpenAIServer([("", "The kettle has boiled.")]) as server:
        done = agent_cli(
            "runs", "resume", source["id"], "--yes", "--json", "--model-server", server.url,
            home=tmp_path, env=service,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "running in this process" not in done.stderr  # the service, when it is on
    events = json_events(done.stdout)
    assert [e["type"] for e in events if e["type"] in ("tool_call", "tool_result", "answer")] == [
        "tool_call",
        "tool_result",
        "answer",
    ]
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert (result["name"], result["content"], result["ok"]) == (
        "slow",
        "waited for the kettle",
        True,
    )
    (sent,) = [request["messages"] for request in server.requests]
    assert said(sent)[0] == "Wait for the kettle."
    assert '"name": "slow"' in said(sent)[1] and "waited for the kettle" in said(sent)[2]
    runs = listed(tmp_path)
    (resumed,) = [run for run in runs if run["origin"] == "resume"]
    assert resumed["origin_run"] == source["id"] and resumed["status"] == "answered"
    assert resumed["conversation_id"] == source["conversation_id"] and resumed["continues"]
    with History(tmp_path / "history.sqlite3") as history:
        kept = history.messages(source["conversation_id"])
    assert [m.get("role") for m in kept] == ["user", "assistant", "function", "assistant"]
    again = agent_cli("runs", "resume", source["id"], "--yes", home=tmp_path)
    assert again.returncode == 2 and "is not the last of its conversation" in again.stderr


@pytest.mark.slow
def test_resume_asks_on_the_terminal_and_a_no_is_not_run(tmp_path: Path) -> None:
    source, _ = record_killed_run(tmp_path)
    with StubOpenAIServer([("", "I did not wait, as you asked.")]) as server:
        argv = agent_argv("runs", "resume", source["id"], "--model-server", server.url)
        terminal = pexpect.spawn(
            argv[0], argv[1:], env=agent_env(tmp_path, {"TERM": "dumb"}), encoding="utf-8",
            timeout=120,
        )  # fmt: skip
        terminal.expect_exact('slow {"note": "the kettle"} had not returned when the run stopped')
        terminal.expect_exact("run it again? [y/N]: ")
        terminal.send("n\r")
        terminal.expect_exact("I did not wait, as you asked.")
        terminal.expect(pexpect.EOF)
        terminal.close()
    assert terminal.exitstatus == 0
    (sent,) = [request["messages"] for request in server.requests]
    assert "the user chose not to run it again" in said(sent)[-1]
    (resumed,) = [run for run in listed(tmp_path) if run["origin"] == "resume"]
    events = json_events(agent_cli("runs", "show", resumed["id"], "--json", home=tmp_path).stdout)
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert not result["ok"] and result["content"].startswith("Error: this call had not returned")


def replay_check(home: Path, run: str, *args: str) -> subprocess.CompletedProcess[str]:
    return agent_cli("runs", "replay", run, "--check", *args, home=home)


@pytest.mark.slow
def test_replay_check_runs_the_tools_with_no_model(tmp_path: Path) -> None:
    source = record_weather_run(tmp_path)  # its model server is gone now: none runs at all

    same = replay_check(tmp_path, source["id"], "--ignore-key", "datetime")
    assert same.returncode == 0, same.stderr
    rows = same.stdout.splitlines()
    assert rows[0].split() == ["step", "tool", "arguments", "result"]
    assert rows[1].split()[:2] == ["1", "weather"] and rows[1].endswith("same")
    assert rows[2].split()[:2] == ["2", "calculator"] and rows[2].endswith("same")
    assert "2 tool calls: 2 same" in same.stderr

    volatile = replay_check(tmp_path, source["id"])  # the time in the result changed
    assert volatile.returncode == 1
    assert volatile.stdout.splitlines()[1].endswith("different")
    masked = replay_check(tmp_path, source["id"], "--ignore", r'"datetime": [0-9.]+')
    assert masked.returncode == 0, masked.stdout

    weather_tool(tmp_path, "rain")  # the plugin tool now says something else
    changed = replay_check(tmp_path, source["id"], "--ignore-key", "datetime", "--json")
    assert changed.returncode == 1
    checks = json_events(changed.stdout)
    assert [(c["name"], c["verdict"]) for c in checks] == [
        ("weather", "different"),
        ("calculator", "same"),
    ]
    assert '"sky": "sunny"' in checks[0]["recorded"] and '"sky": "rain"' in checks[0]["now"]

    weather_tool(tmp_path, "broken")
    failing = replay_check(tmp_path, source["id"])
    assert failing.returncode == 1
    assert failing.stdout.splitlines()[1].endswith("error: fails now")
    assert "now:      Error: the weather service is down" in failing.stdout

    bad = replay_check(tmp_path, source["id"], "--ignore", "(")
    assert bad.returncode == 2 and "--ignore '(': not a regular expression" in bad.stderr


def test_a_step_that_splits_one_output_of_several_calls_keeps_the_earlier_results() -> None:
    first, second = call_message("a", {"n": 1}), call_message("b", {"n": 2})
    results = [{"role": "function", "name": n, "content": n.upper()} for n in ("a", "b")]
    said = {"role": "assistant", "content": "Two calls at once."}
    answer = {"role": "assistant", "content": "Done."}
    messages = [said, first, second, *results, answer]
    assert before_step(messages, 1) == []  # the text came with the calls: decided again too
    assert before_step(messages, 2) == [said, first, results[0]]
    assert split_pending([said, first, second, results[0]]) == ([said, first, results[0]], [second])
