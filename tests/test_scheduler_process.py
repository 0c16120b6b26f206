"""The real `agent scheduler run` and `agent schedule` processes on a real SQLite file.

The model is a TEST DOUBLE of an OpenAI-compatible server (tests/stub_openai_server.py) on
127.0.0.1, so runs take as long as a test needs them to; everything else is the product's.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.history.store import History
from agent.scheduler.ledger import Ledger, Occurrence
from tests.clirun import agent_argv, agent_cli, agent_env, empty_mcp_config
from tests.stub_openai_server import StubOpenAIServer

LONG_REPLY = "All quiet on every front today. " * 8  # 4 characters a chunk: 64 chunks


def _env(home: Path) -> dict[str, str]:
    return {"AGENT_MCP_CONFIG": str(empty_mcp_config(home))}


def add_job(home: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = agent_cli("schedule", "add", name, *args, home=home, env=_env(home))
    assert done.returncode == 0, done.stderr
    return done


@contextmanager
def scheduler(home: Path) -> Iterator[subprocess.Popen[str]]:
    """`agent scheduler run` in the background; stopped with SIGTERM at the end."""
    log = (home / "scheduler.log").open("a")
    process = subprocess.Popen(
        agent_argv("scheduler", "run"),
        env=agent_env(home, _env(home)),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: "scheduler: watching" in (home / "scheduler.log").read_text(), 60)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        log.close()


def wait_for(condition: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def occurrences(home: Path, name: str) -> list[Occurrence]:
    with History(home / "history.sqlite3") as history:
        ledger = Ledger(history)
        return sorted(ledger.occurrences(ledger.job(name), 1000), key=lambda o: o.scheduled_at)


def run_statuses(home: Path) -> dict[str, str]:
    with History(home / "history.sqlite3") as history:
        return {run.id: run.status for run in history.runs(limit=1000)}


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_second_scheduler_on_the_same_database_refuses(tmp_path: Path) -> None:
    with scheduler(tmp_path) as first:
        status = agent_cli("scheduler", "status", "--json", home=tmp_path)
        assert json.loads(status.stdout)["running"] is True
        assert json.loads(status.stdout)["pid"] == first.pid
        second = agent_cli("scheduler", "run", home=tmp_path, timeout=60)
        assert second.returncode == 1
        assert f"another scheduler is running on {tmp_path / 'history.sqlite3'}" in second.stderr
        assert f"(pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert first.returncode == 0
    status = agent_cli("scheduler", "status", home=tmp_path)
    assert status.stdout.startswith("scheduler not running")


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_loses_no_occurrence_and_runs_none_twice(
    tmp_path: Path,
) -> None:
    replies = [("", LONG_REPLY)] + [("", "Short report.")] * 40
    with StubOpenAIServer(replies, delay_s=0.2) as server:
        add_job(tmp_path, "report", "--every", "3s", "--model-server", server.url,
                "--tools", "", "Write the report")  # fmt: skip
        with scheduler(tmp_path) as first:
            running = wait_for(
                lambda: [o for o in occurrences(tmp_path, "report") if o.status == "running"
                         and o.run_id], 60)  # fmt: skip
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        killed = running[0]
        with scheduler(tmp_path):
            wait_for(lambda: len([o for o in occurrences(tmp_path, "report")
                                  if o.status == "succeeded"]) >= 2, 90)  # fmt: skip
            # An outside scheduler firing the same slots meanwhile gets none of them twice.
            outside = agent_cli("schedule", "run-now", "report", "--occurrence", "latest",
                                home=tmp_path, env=_env(tmp_path))  # fmt: skip
            assert outside.returncode == 0, outside.stderr
    found = occurrences(tmp_path, "report")
    after = {o.scheduled_at: o for o in found}
    assert after[killed.scheduled_at].status == "interrupted"
    assert "stopped before it ended" in (after[killed.scheduled_at].reason or "")
    assert run_statuses(tmp_path)[killed.run_id or ""] == "interrupted"
    # Every slot from the first to the last is in the ledger once, whatever became of it.
    slots = [o.scheduled_at for o in found]
    assert slots == [slots[0] + 3 * step for step in range(len(slots))]
    runs = [o.run_id for o in found if o.run_id]
    assert len(runs) == len(set(runs)) == len(run_statuses(tmp_path))
    assert {o.status for o in found} <= {"succeeded", "interrupted", "missed", "skipped"}


@pytest.mark.slow
def test_a_failing_job_records_why_and_the_other_jobs_still_run_on_time(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{dead_port()}/v1"
    hook_file = tmp_path / "hook.env"
    # Appended: a later occurrence, interrupted when the scheduler stops, runs the hook too.
    hook = f"(env | grep ^AGENT_; echo ---) >> {hook_file}"
    with (
        StubOpenAIServer([("", "Fine report.")] * 20) as fine,
        StubOpenAIServer([("", LONG_REPLY)] * 5, delay_s=0.5) as slow,
    ):
        add_job(tmp_path, "broken", "--every", "4s", "--model-server", down, "--tools", "",
                "--no-check", "--on-failure", hook, "Report")  # fmt: skip
        add_job(tmp_path, "slow", "--every", "1h", "--model-server", slow.url, "--tools", "",
                "--time-limit", "2s", "Report")  # fmt: skip
        add_job(tmp_path, "fine", "--every", "4s", "--model-server", fine.url, "--tools", "",
                "--output", str(tmp_path / "fine.md"), "Report")  # fmt: skip
        with scheduler(tmp_path):
            timed = agent_cli("schedule", "run-now", "slow", home=tmp_path, env=_env(tmp_path))
            wait_for(lambda: len([o for o in occurrences(tmp_path, "fine")
                                  if o.status == "succeeded"]) >= 2, 90)  # fmt: skip
            wait_for(lambda: [o for o in occurrences(tmp_path, "broken")
                              if o.status == "failed"], 90)  # fmt: skip
            rescued = agent_cli("schedule", "run-now", "broken", "--model-server", fine.url,
                                home=tmp_path, env=_env(tmp_path))  # fmt: skip
    assert rescued.returncode == 0 and "broken: succeeded" in rescued.stdout, rescued.stderr
    assert timed.returncode == 1 and "slow: timed_out" in timed.stdout
    broken = [o for o in occurrences(tmp_path, "broken") if o.status == "failed"][0]
    assert broken.reason and "model server" in broken.reason
    calls = [
        dict(line.split("=", 1) for line in block.strip().splitlines())
        for block in hook_file.read_text().split("---\n")
        if block.strip()
    ]
    assert calls and all(call["AGENT_JOB"] == "broken" for call in calls)
    told = next(call for call in calls if call["AGENT_STATUS"] == "failed")
    hooked = {o.run_id: o for o in occurrences(tmp_path, "broken")}[told["AGENT_RUN_ID"]]
    assert told["AGENT_REASON"] == hooked.reason and hooked.status == "failed"
    assert told["AGENT_ANSWER_FILE"] == ""
    for ran in [o for o in occurrences(tmp_path, "fine") if o.status == "succeeded"]:
        assert ran.started_at is not None and ran.started_at - ran.scheduled_at < 10
        assert ran.answer_file == str(tmp_path / "fine.md")
    assert (tmp_path / "fine.md").read_text() == "Fine report.\n"
    shown = agent_cli("runs", "show", broken.run_id or "", "--json", home=tmp_path)
    kinds = [event["type"] for event in map(json.loads, shown.stdout.splitlines())]
    assert kinds[0] == "run_started" and "error" in kinds and kinds[-1] == "run_finished"


@pytest.mark.slow
def test_run_now_while_the_job_runs_follows_its_overlap_policy(tmp_path: Path) -> None:
    with StubOpenAIServer([("", LONG_REPLY)] + [("", "Second.")] * 4, delay_s=0.05) as server:
        for name, overlap in (("skipper", "skip"), ("queuer", "queue")):
            add_job(tmp_path, name, "--every", "1h", "--model-server", server.url, "--tools",
                    "", "--overlap", overlap, "Report")  # fmt: skip

        def start(name: str) -> subprocess.Popen[str]:
            return subprocess.Popen(
                agent_argv("schedule", "run-now", name), env=agent_env(tmp_path, _env(tmp_path)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip

        for name in ("skipper", "queuer"):
            first = start(name)
            wait_for(lambda n=name: [o for o in occurrences(tmp_path, n) if o.status == "running"],
                     60)  # type: ignore[misc]  # fmt: skip
            second = agent_cli("schedule", "run-now", name, home=tmp_path, env=_env(tmp_path))
            out, _ = first.communicate(timeout=120)
            assert first.returncode == 0 and f"{name}: succeeded" in out
            if name == "skipper":
                assert second.returncode == 0
                assert "skipper: skipped: the previous run was still running" in second.stdout
            else:  # it waited for the running one, then ran
                assert second.returncode == 0 and "queuer: succeeded" in second.stdout, second
                first_run, second_run = occurrences(tmp_path, "queuer")
                assert second_run.started_at and first_run.finished_at
                assert second_run.started_at >= first_run.finished_at


@pytest.mark.slow
def test_run_now_in_the_second_the_scheduler_fires_still_runs(tmp_path: Path) -> None:
    with StubOpenAIServer([("", "Manual.")]) as server:
        add_job(tmp_path, "often", "--every", "1s", "--model-server", server.url, "--tools", "",
                "Report")  # fmt: skip
        with History(tmp_path / "history.sqlite3") as history:  # every second is a slot: taken
            ledger = Ledger(history)
            job = ledger.job("often")
            now = int(time.time())
            for at in range(now - 2, now + 60):
                ledger.record(job, float(at), "missed", "claimed by the test", "schedule")
        manual = agent_cli("schedule", "run-now", "often", home=tmp_path, env=_env(tmp_path))
    assert manual.returncode == 0 and "often: succeeded" in manual.stdout, manual
    (ran,) = [o for o in occurrences(tmp_path, "often") if o.trigger == "manual"]
    assert ran.status == "succeeded" and now - 2 < ran.scheduled_at < now + 60


@pytest.mark.slow
def test_add_refuses_what_no_run_could_get_past(tmp_path: Path) -> None:
    with StubOpenAIServer([], models=("Qwen/Qwen3-0.6B-GPTQ-Int8",)) as server:
        cases = [
            (["empty", "--every", "1h", "   "], "error: the job has no task"),
            (["tool", "--every", "1h", "--tools", "nosuch", "--model-server", server.url, "x"],
             "error: no tool named 'nosuch'"),
            (["cron", "--cron", "0 25 * * *", "x"], "error: --cron '0 25 * * *': bad hour"),
            (["zone", "--every", "1h", "--tz", "Moon/Base", "x"], "error: unknown time zone"),
            (["two", "--every", "1h", "--cron", "* * * * *", "x"], "error: give exactly one of"),
            (["srv", "--every", "1h", "--model-server", f"http://127.0.0.1:{dead_port()}/v1",
              "--tools", "", "x"], "does not answer"),
            (["name", "--every", "1h", "--model-server", server.url, "--model", "other",
              "--tools", "", "x"], "serves Qwen/Qwen3-0.6B-GPTQ-Int8, not other"),
        ]  # fmt: skip
        for args, message in cases:
            done = agent_cli("schedule", "add", *args, home=tmp_path, env=_env(tmp_path))
            assert done.returncode == 2 and message in done.stderr, (args, done.stderr)
            assert "Traceback" not in done.stderr
        add_job(tmp_path, "ok", "--every", "1h", "--model-server", server.url, "--tools", "", "x")
        again = agent_cli("schedule", "add", "ok", "--every", "1h", "x", home=tmp_path)
        assert again.returncode == 2 and "a job named 'ok' exists already" in again.stderr
    listed = agent_cli("schedule", "list", "--json", home=tmp_path)
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["ok"]


@pytest.mark.slow
def test_jobs_are_edited_paused_resumed_and_removed(tmp_path: Path) -> None:
    added = add_job(tmp_path, "digest", "--cron", "30 2 * 3,10 0", "--tz", "Europe/Berlin",
                    "--no-check", "Summarize the news")  # fmt: skip
    assert "next 5 runs (Europe/Berlin):" in added.stdout
    # Sundays of March and October at 02:30: the next five include a clock change.
    assert "does not exist (clocks go forward)" in added.stdout or "happens twice" in added.stdout
    edited = agent_cli("schedule", "edit", "digest", "--every", "2h", "--overlap", "queue",
                       "--no-check", home=tmp_path)  # fmt: skip
    assert edited.returncode == 0 and "changed job digest: every 2h" in edited.stdout
    shown = json.loads(agent_cli("schedule", "show", "digest", "--json", home=tmp_path).stdout)
    assert shown["trigger"] == {"kind": "every", "spec": "7200", "tz": "Europe/Berlin"}
    assert shown["options"]["overlap"] == "queue" and shown["task"] == "Summarize the news"
    assert len(shown["next_runs"]) == 5
    assert agent_cli("schedule", "pause", "digest", home=tmp_path).returncode == 0
    listed = agent_cli("schedule", "list", home=tmp_path).stdout
    assert listed.startswith("digest  next: paused")
    assert agent_cli("schedule", "resume", "digest", home=tmp_path).returncode == 0
    assert "next: paused" not in agent_cli("schedule", "list", home=tmp_path).stdout
    assert agent_cli("schedule", "remove", "digest", home=tmp_path).returncode == 0
    gone = agent_cli("schedule", "show", "digest", home=tmp_path)
    assert gone.returncode == 2 and "no job named 'digest'" in gone.stderr
