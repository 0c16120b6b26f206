"""The run history: a real SQLite file, written by real `agent` processes."""

import json
import signal
import sqlite3
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.history.schema import VERSION, migrate
from tests.clirun import agent_argv, agent_cli, agent_env, empty_mcp_config, json_events
from tests.stub_openai_server import StubOpenAIServer

CODE = """print('mcp-server "quoted" a*b ' + 'wal' + 'rus')"""  # walrus: in the result only
CALL = (
    "<tool_call>\n"
    + json.dumps({"name": "code_interpreter", "arguments": {"code": CODE}})
    + "\n</tool_call>"
)


def run_args(server: StubOpenAIServer, home: Path, *extra: str) -> list[str]:
    return ["--model-server", server.url, "--mcp-config", str(empty_mcp_config(home)), *extra]


def listed(home: Path, *args: str) -> list[dict]:
    done = agent_cli("runs", "list", "--json", *args, home=home)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.slow
def test_runs_show_is_the_live_output_byte_for_byte(tmp_path: Path) -> None:
    with StubOpenAIServer([("", CALL), ("", "It printed walrus.")]) as server:
        live = agent_cli("run", "Print it.", *run_args(server, tmp_path), home=tmp_path)
    assert live.returncode == 0, live.stderr
    (run,) = listed(tmp_path)
    assert list(run)[0] == "id" and run["status"] == "answered"
    assert run["answer"] == "It printed walrus."
    shown = agent_cli("runs", "show", run["id"], home=tmp_path)
    assert (shown.stdout, shown.stderr) == (live.stdout, live.stderr)
    as_json = agent_cli("runs", "show", run["id"], "--json", home=tmp_path)
    kinds = [event["type"] for event in json_events(as_json.stdout)]
    assert kinds[0] == "run_started" and "tool_result" in kinds and kinds[-1] == "run_finished"


@pytest.mark.slow
def test_search_looks_inside_tool_results_and_takes_any_text(tmp_path: Path) -> None:
    with StubOpenAIServer([("", CALL), ("", "Done."), ("", "Other.")]) as server:
        assert (
            agent_cli("run", "Print it.", *run_args(server, tmp_path), home=tmp_path).returncode
            == 0
        )
        assert (
            agent_cli(
                "run", "Something else.", *run_args(server, tmp_path), home=tmp_path
            ).returncode
            == 0
        )
    assert len(listed(tmp_path)) == 2
    for text in ("walrus", "mcp-server", '"quoted"', "a*b", 'mcp-server "quoted"', "AND", "-"):
        found = listed(tmp_path, "--search", text)
        assert [run["prompt"] for run in found] == (
            ["Print it."] if text not in ("AND", "-") else []
        ), text
    assert [r["prompt"] for r in listed(tmp_path, "--tool", "code_interpreter")] == ["Print it."]
    assert len(listed(tmp_path, "--since", "1h")) == 2
    assert listed(tmp_path, "--status", "error") == []


@pytest.mark.slow
def test_a_killed_run_is_kept_and_marked_interrupted(tmp_path: Path) -> None:
    slow = "word " * 400
    with StubOpenAIServer([("", slow)], delay_s=0.02) as server:
        argv = agent_argv("run", "Talk a lot.", *run_args(server, tmp_path), "--no-tools")
        process = subprocess.Popen(
            argv, env=agent_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        database = tmp_path / "history.sqlite3"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if database.exists() and _events(database) >= 20:
                break
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait()
    (run,) = listed(tmp_path)
    assert run["status"] == "interrupted"
    shown = agent_cli("runs", "show", run["id"], home=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("word word word")


def _events(database: Path) -> int:
    with sqlite3.connect(database, timeout=30) as conn:
        try:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.OperationalError:  # not created yet
            return 0


@pytest.mark.slow
def test_four_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    replies = [("", "Answer number one, with several words in it.")] * 4
    with StubOpenAIServer(replies, delay_s=0.005) as server:
        args = run_args(server, tmp_path, "--no-tools")
        with ThreadPoolExecutor(4) as pool:
            runs = list(
                pool.map(
                    lambda n: agent_cli("run", f"Question {n}", *args, "--json", home=tmp_path),
                    range(4),
                )
            )
    assert all(done.returncode == 0 for done in runs), [done.stderr for done in runs]
    stored = listed(tmp_path)
    assert sorted(run["prompt"] for run in stored) == [f"Question {n}" for n in range(4)]
    for run, done in zip(sorted(stored, key=lambda r: r["prompt"]), runs, strict=True):
        live = json_events(done.stdout)
        kept = json_events(agent_cli("runs", "show", run["id"], "--json", home=tmp_path).stdout)
        assert kept == live


def test_an_older_database_is_migrated_without_loss(tmp_path: Path) -> None:
    database = tmp_path / "history.sqlite3"
    conn = sqlite3.connect(database, isolation_level=None)
    assert migrate(conn, to=1) == 1  # the first release's schema, with a run in it
    conn.execute("INSERT INTO conversations VALUES ('c-old', 'run', 1.0)")
    conn.execute(
        "INSERT INTO runs (id, conversation_id, turn, started_at, finished_at, status, model, "
        "backend, thinking, settings, prompt, answer) VALUES ('r-old', 'c-old', 1, 1.0, 2.0, "
        "'answered', 'm', 'local', 0, '{}', 'an old question', 'an old answer')"
    )
    result = {"call_id": "call_1", "name": "t", "content": "narwhal", "ok": True, "duration_s": 0.1}
    conn.execute(
        "INSERT INTO events VALUES ('r-old', 0, 'tool_result', ?)",
        (json.dumps({"type": "tool_result", **result}),),
    )
    conn.close()
    (run,) = listed(tmp_path, "--search", "narwhal")  # migrated: search covers the old run
    assert (run["id"], run["prompt"], run["answer"]) == (
        "r-old",
        "an old question",
        "an old answer",
    )
    with sqlite3.connect(database) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == VERSION


@pytest.mark.slow
def test_piped_input_joins_the_prompt_and_huge_input_is_refused(tmp_path: Path) -> None:
    with StubOpenAIServer([("", "Summary."), ("", "Dash.")]) as server:
        args = run_args(server, tmp_path, "--no-tools")
        done = agent_cli("run", "Summarize this", *args, home=tmp_path, stdin="my notes\n")
        assert done.returncode == 0, done.stderr
        dash = agent_cli("run", "-", *args, home=tmp_path, stdin="only stdin\n")
        assert dash.returncode == 0, dash.stderr
    users = [
        [m["content"] for m in request["messages"] if m["role"] == "user"]
        for request in server.requests
    ]
    assert users == [["Summarize this\n\nmy notes"], ["only stdin"]]
    huge = agent_cli("run", "Read:", "--no-tools", home=tmp_path, stdin="lorem ipsum " * 40_000)
    assert huge.returncode == 2
    assert huge.stderr.splitlines()[-1].startswith("error: the prompt is ")
    assert "32,768-token context" in huge.stderr
    empty = agent_cli("run", home=tmp_path)
    assert empty.returncode == 2 and "no task" in empty.stderr


@pytest.mark.slow
def test_delete_export_and_no_log(tmp_path: Path) -> None:
    with StubOpenAIServer([("", CALL), ("", "Done."), ("", "Unlogged.")]) as server:
        agent_cli("run", "Print it.", *run_args(server, tmp_path), home=tmp_path)
        quiet = agent_cli("run", "Secret.", *run_args(server, tmp_path), "--no-log", home=tmp_path)
        assert quiet.returncode == 0
    (run,) = listed(tmp_path)
    markdown = agent_cli("runs", "export", run["id"], home=tmp_path).stdout
    assert "> Print it." in markdown and "walrus" in markdown and "**Answer:**" in markdown
    out = tmp_path / "run.json"
    assert (
        agent_cli(
            "runs", "export", run["id"], "--format", "json", "--out", str(out), home=tmp_path
        ).returncode
        == 0
    )
    assert json.loads(out.read_text())["runs"][0]["events"][0]["type"] == "run_started"
    deleted = agent_cli("runs", "delete", run["conversation_id"], home=tmp_path)
    assert deleted.returncode == 0 and "conversation" in deleted.stdout
    assert listed(tmp_path) == [] and listed(tmp_path, "--search", "walrus") == []
    missing = agent_cli("runs", "show", "r-nope", home=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no run or conversation")
    bad = agent_cli("runs", "list", "--since", "yesterday", home=tmp_path)
    assert bad.returncode == 2 and "--since" in bad.stderr
