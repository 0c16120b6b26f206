"""Hooks at the four points (before and after each tool call, a run's start and end): the user's
commands from config.toml, run by the real `agent` command in-process, through the resident
service and in a scheduled job; and Python plugins on the same pluggy points.

The model is a TEST DOUBLE of an OpenAI-compatible server (tests/stub_openai_server.py) or
Qwen-Agent driven by recorded outputs (`ScriptedLLM`), so the tool calls are exact. The hook
commands are real programs reading their event from stdin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from qwen_agent.tools.base import BaseTool
from transformers import PreTrainedTokenizerFast

from agent.config import HookCommands, Settings, load_settings
from agent.errors import ConfigError
from agent.events import Event, Notice, RunFinished, RunStarted, ToolResult
from agent.loop.assistant import build_assistant
from agent.loop.runner import RunInfo, run_events
from agent.plugins import hookimpl, plugin_manager
from agent.service.protocol import settings_from_wire, settings_to_wire
from agent.testing.transcripts import ScriptedLLM
from agent.tools.toolset import ToolEntry, Toolset
from tests.clirun import agent_argv, agent_cli, agent_env, empty_mcp_config, json_events
from tests.stub_openai_server import StubOpenAIServer

NOTE_TOOL = '''
from pathlib import Path

from agent.plugins import tool


@tool
def note(text: str, path: str) -> str:
    """Write a note to a file.

    Args:
        text: What to write.
        path: Where.
    """
    Path(path).write_text(text)
    return f"wrote {len(text)} characters"
'''
# Appends its event (stdin) as one JSON line to argv[1]; with `guard`, refuses notes about
# secrets (exit 1, the reason on stderr); with `env NAME`, adds that variable's value and the
# hook's parent pid to the line.
HOOK = """
import json, os, sys
event = json.load(sys.stdin)
if sys.argv[2:3] == ["env"]:
    event["env"] = os.environ.get(sys.argv[3], "(unset)")
    event["parent_pid"] = os.getppid()
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(event) + "\\n")
if sys.argv[2:] == ["guard"] and "secret" in json.dumps(event["arguments"]):
    print("notes about secrets are not allowed", file=sys.stderr)
    sys.exit(1)
"""


def call(name: str, arguments: dict[str, Any]) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def toml_list(argv: list[str]) -> str:
    return json.dumps(argv)  # a JSON array of strings is a TOML array


class Setup:
    """An AGENT_HOME with the note tool, the hook script and a config.toml of hooks."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.work = root / "work"  # the directory the user runs `agent` in
        self.home.mkdir()
        self.work.mkdir()
        self.tool = root / "note_tool.py"
        self.tool.write_text(NOTE_TOOL)
        self.hook = root / "hook.py"
        self.hook.write_text(HOOK)
        self.mcp = empty_mcp_config(root)

    def hook_argv(self, log: str, *extra: str) -> list[str]:
        return [sys.executable, str(self.hook), str(self.root / log), *extra]

    def configure(self, text: str) -> None:
        (self.home / "config.toml").write_text(text)

    def logged(self, log: str) -> list[dict[str, Any]]:
        path = self.root / log
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def run(
        self, server: StubOpenAIServer, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`agent run` in the work directory, calling only the note tool."""
        argv = agent_argv(
            "run", "--model-server", server.url, "--mcp-config", str(self.mcp),
            "--tool", str(self.tool), "--tools", "note", *extra, "Write the notes.",
        )  # fmt: skip
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            env=agent_env(self.home, env),
            cwd=self.work,
            timeout=300,
            check=False,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


# --- The [hooks] table in config.toml ----------------------------------------------------------


def test_each_form_of_a_hook_command_is_an_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", "/home/someone")
    (tmp_path / "config.toml").write_text(
        "hook_timeout = 3\n[hooks]\n"
        "before_tool_call = \"check --level 'very strict' ~/rules.txt\"\n"
        'after_tool_call = ["log-call", "a b", "$HOME"]\n'
        'run_finished = [["notify-send", "done"], ["~/bin/tally"]]\n'
        "run_started = []\n"
    )
    settings = load_settings()
    assert settings.hook_timeout == 3
    assert settings.hooks == HookCommands(
        before_tool_call=(("check", "--level", "very strict", "/home/someone/rules.txt"),),
        after_tool_call=(("log-call", "a b", "$HOME"),),  # no shell: nothing else is expanded
        run_started=(),
        run_finished=(("notify-send", "done"), ("/home/someone/bin/tally",)),
    )
    # The resident service gets them as JSON and reads back the same commands.
    assert settings_from_wire(json.loads(json.dumps(settings_to_wire(settings)))) == settings


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ("[hooks]\nbefore_tool_call = 5\n", "hooks.before_tool_call must be a string"),
        ('[hooks]\nafter_tool_call = ["ok", ["mixed"]]\n', "hooks.after_tool_call must be"),
        ('[hooks]\nrun_started = ""\n', "hooks.run_started has an empty command"),
        ('[hooks]\nrun_finished = "say \'unclosed"\n', "hooks.run_finished: No closing quotation"),
        ('[hooks]\nbefore_call = "x"\n', "unknown hook point(s) before_call in [hooks]; known:"),
        ('hooks = "x"\n', "'hooks' must be a table ([hooks])"),
        ("hook_timeout = 0\n", "hook_timeout must be > 0"),
    ],
)
def test_a_wrong_hooks_table_is_one_line_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, says: str
) -> None:
    monkeypatch.setenv("AGENT_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(table)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert says in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.slow
def test_the_cli_refuses_a_wrong_hooks_table_with_exit_2(setup: Setup) -> None:
    setup.configure("[hooks]\nbefore_tool_call = 5\n")
    done = agent_cli("run", "--no-service", "hello", home=setup.home, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "hooks.before_tool_call must be a string" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- Hook commands, in-process ------------------------------------------------------------------


@pytest.mark.slow
def test_hook_commands_at_the_four_points(setup: Setup) -> None:
    secret, kept = setup.root / "secret.txt", setup.root / "kept.txt"
    setup.configure(
        "[hooks]\n"
        f"before_tool_call = {toml_list(setup.hook_argv('before.jsonl', 'guard'))}\n"
        f"after_tool_call = {toml_list(setup.hook_argv('after.jsonl'))}\n"
        f"run_started = {toml_list(setup.hook_argv('started.jsonl'))}\n"
        f"run_finished = {toml_list(setup.hook_argv('finished.jsonl'))}\n"
    )
    replies = [
        ("", call("note", {"text": "the secret plan", "path": str(secret)})),
        ("", call("note", {"text": "hello", "path": str(kept)})),
        ("", "One note written, one refused."),
    ]
    with StubOpenAIServer(replies) as server:
        done = setup.run(server, "--json")
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    run_id = of_type(events, "run_started")[0]["run_id"]
    cwd = str(setup.work)

    # A before_tool_call hook that exits 1 blocks the call: its stderr is the error result the
    # model reads, and the tool never ran. One that exits 0 lets the call run.
    refused, allowed = of_type(events, "tool_result")
    assert refused["ok"] is False
    assert refused["content"] == "Error: notes about secrets are not allowed"
    assert not secret.exists()
    assert allowed["ok"] is True and allowed["content"] == "wrote 5 characters"
    assert kept.read_text() == "hello"
    assert "Error: notes about secrets are not allowed" in json.dumps(server.requests[1])
    assert [e["arguments"]["text"] for e in setup.logged("before.jsonl")] == [
        "the secret plan",
        "hello",
    ]
    assert setup.logged("before.jsonl")[0] == {
        "hook": "before_tool_call",
        "cwd": cwd,
        "run_id": run_id,
        "name": "note",
        "arguments": {"text": "the secret plan", "path": str(secret)},
    }

    # after_tool_call: only the call that ran, with its result.
    [after] = setup.logged("after.jsonl")
    assert after == {
        "hook": "after_tool_call",
        "cwd": cwd,
        "run_id": run_id,
        "name": "note",
        "arguments": {"text": "hello", "path": str(kept)},
        "result": "wrote 5 characters",
        "ok": True,
        "duration_s": after["duration_s"],
    }
    assert isinstance(after["duration_s"], float)

    [started] = setup.logged("started.jsonl")
    assert started == {
        "hook": "run_started",
        "cwd": cwd,
        "run_id": run_id,
        "prompt": "Write the notes.",
        "model": "Qwen/Qwen3-0.6B-GPTQ-Int8",
        "backend": f"server {server.url}",
        "tools": ["note"],
    }
    [finished] = setup.logged("finished.jsonl")
    assert finished["hook"] == "run_finished" and finished["run_id"] == run_id
    assert finished["status"] == "answered" == of_type(events, "run_finished")[0]["status"]
    assert finished["answer"] == "One note written, one refused."
    assert finished["prompt"] == "Write the notes." and "total_s" in finished["timings"]
    assert of_type(events, "notice") == []  # every hook succeeded

    # The run id the hooks got is the run history's.
    shown = agent_cli("runs", "show", run_id, "--json", home=setup.home, timeout=120)
    assert shown.returncode == 0 and json_events(shown.stdout)[0]["run_id"] == run_id


def sleeper_argv(pid_file: Path) -> list[str]:
    """A hook that starts a child in its process group, then waits forever."""
    return ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"]


def gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie waiting for its reaper counts as ended)."""
    for _ in range(200):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_hook_over_its_time_limit_is_killed_with_its_group_and_the_run_goes_on(
    setup: Setup,
) -> None:
    # before_tool_call fails closed: a guard that cannot decide in time does not let the call
    # run. At the other points the run goes on, with a notice.
    before_pid, finished_pid = setup.root / "before.pid", setup.root / "finished.pid"
    target = setup.root / "note.txt"
    setup.configure(
        "hook_timeout = 2\n[hooks]\n"
        f"before_tool_call = {toml_list(sleeper_argv(before_pid))}\n"
        f"run_finished = {toml_list(sleeper_argv(finished_pid))}\n"
    )
    replies = [("", call("note", {"text": "hi", "path": str(target)})), ("", "It was blocked.")]
    with StubOpenAIServer(replies) as server:
        done = setup.run(server, "--json")
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    [result] = of_type(events, "tool_result")
    assert result["ok"] is False and not target.exists()
    # The command is named (its middle left out past 80 characters), then what became of it.
    assert result["content"].startswith("Error: blocked by the before_tool_call hook (sh -c 'sle")
    assert result["content"].endswith("before.pid; wait'): was killed at its time limit of 2 s")
    [notice] = of_type(events, "notice")
    assert notice["kind"] == "hook" and notice["message"].startswith("run_finished hook (sh -c")
    assert notice["message"].endswith("was killed at its time limit of 2 s")
    assert of_type(events, "run_finished")[0]["status"] == "answered"
    # The hooks' children went with them: the whole process group is killed.
    assert gone(int(before_pid.read_text())) and gone(int(finished_pid.read_text()))


@pytest.mark.slow
def test_a_hook_command_that_does_not_exist_is_a_refusal_or_a_notice(setup: Setup) -> None:
    target = setup.root / "note.txt"
    setup.configure(
        '[hooks]\nbefore_tool_call = "no-such-hook-command --check"\n'
        'run_started = "no-such-hook-command"\n'
    )
    replies = [("", call("note", {"text": "hi", "path": str(target)})), ("", "Blocked.")]
    with StubOpenAIServer(replies) as server:
        done = setup.run(server)  # the terminal view
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert not target.exists()
    assert (
        "notice: run_started hook (no-such-hook-command) cannot run: 'no-such-hook-command' "
        "not found" in done.stderr
    )
    assert (
        "Error: blocked by the before_tool_call hook (no-such-hook-command --check): cannot "
        "run: 'no-such-hook-command' not found" in done.stderr
    )
    assert done.stdout.strip() == "Blocked."


@pytest.mark.slow
def test_what_a_hook_says_reaches_the_terminal_with_its_controls_made_visible(
    setup: Setup,
) -> None:
    loud = setup.root / "loud.py"
    loud.write_text(
        "import sys\nsys.stderr.write('\\x1b]0;owned\\x07\\x1b[2Jrefused\\r\\n' + 'x' * 5000)\n"
        "sys.exit(3)\n"
    )
    argv = toml_list([sys.executable, str(loud)])
    setup.configure(f"[hooks]\nbefore_tool_call = {argv}\nrun_finished = {argv}\n")
    replies = [("", call("note", {"text": "hi", "path": str(setup.root / "n.txt")})), ("", "No.")]
    with StubOpenAIServer(replies) as server:
        shown = setup.run(server)
    with StubOpenAIServer(replies) as server:
        as_json = setup.run(server, "--json")
    assert shown.returncode == 0 and "\x1b" not in shown.stderr + shown.stdout
    assert "\x07" not in shown.stderr and "\r" not in shown.stderr
    assert "✗ note 0.0s Error: ␛]0;owned␇␛[2Jrefused␍ xxx" in shown.stderr
    assert "notice: run_finished hook (" in shown.stderr
    assert "/loud.py) exited with 3: ␛]0;owned␇␛[2Jrefused␍ xxx" in shown.stderr
    [result] = of_type(json_events(as_json.stdout), "tool_result")
    # Trimmed, capped, made visible: what the model reads too.
    assert result["content"].startswith("Error: ␛]0;owned␇␛[2Jrefused␍\nxxx")
    assert result["content"].endswith(" … [cut at 2,000 characters]")
    assert len(result["content"]) < 2_100


# --- Through the resident service, and in a scheduled job --------------------------------------


@pytest.mark.slow
def test_through_the_service_a_hook_runs_with_the_clients_environment(setup: Setup) -> None:
    on = {"AGENT_SERVICE": "required"}
    setup.configure(
        f"[hooks]\nrun_started = {toml_list(setup.hook_argv('started.jsonl', 'env', 'MARK'))}\n"
    )
    try:
        with StubOpenAIServer([("", "First."), ("", "Second.")]) as server:
            first = setup.run(server, "--json", env={**on, "MARK": "from the first shell"})
            second = setup.run(server, "--json", env={**on, "MARK": "from the second shell"})
        status = agent_cli("service", "status", "--json", home=setup.home, env=on, timeout=60)
    finally:
        stopped = agent_cli("service", "stop", home=setup.home, env=on, timeout=60)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert stopped.returncode == 0, stopped.stderr
    service_pid = json.loads(status.stdout)["pid"]
    hooks = setup.logged("started.jsonl")
    # The service (started by the first client, with its environment) ran both hooks, each
    # with the environment and working directory of the client that asked.
    assert [h["env"] for h in hooks] == ["from the first shell", "from the second shell"]
    assert [h["parent_pid"] for h in hooks] == [service_pid, service_pid]
    assert [h["cwd"] for h in hooks] == [str(setup.work)] * 2
    runs = [
        of_type(json_events(done.stdout), "run_started")[0]["run_id"] for done in (first, second)
    ]
    assert [h["run_id"] for h in hooks] == runs


@pytest.mark.slow
def test_a_jobs_before_tool_call_hook_blocks_its_calls(setup: Setup) -> None:
    secret = setup.root / "secret.txt"
    setup.configure(
        f"tool_files = [{json.dumps(str(setup.tool))}]\n[hooks]\n"
        f"before_tool_call = {toml_list(setup.hook_argv('before.jsonl', 'guard'))}\n"
    )
    env = {"AGENT_MCP_CONFIG": str(setup.mcp)}
    replies = [("", call("note", {"text": "a secret", "path": str(secret)})), ("", "Refused.")]
    with StubOpenAIServer(replies) as server:
        added = agent_cli(
            "schedule", "add", "guarded", "--every", "1h", "--model-server", server.url,
            "--tools", "note", "Write the note.", home=setup.home, env=env, timeout=120,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        ran = agent_cli("schedule", "run-now", "guarded", home=setup.home, env=env, timeout=120)
    # The refused call is the job's failure, said in one line.
    assert ran.returncode == 1
    assert "failed: tool note failed: Error: notes about secrets are not allowed" in ran.stderr
    assert not secret.exists()
    [hooked] = setup.logged("before.jsonl")
    shown = agent_cli("runs", "show", hooked["run_id"], "--json", home=setup.home, timeout=60)
    [result] = of_type(json_events(shown.stdout), "tool_result")
    assert result["content"] == "Error: notes about secrets are not allowed"


# --- Python plugins on the same points ---------------------------------------------------------


class Clock(BaseTool):
    name = "clock"
    description = "The time in a time zone."
    parameters = {
        "type": "object",
        "properties": {"timezone": {"type": "string"}},
        "required": ["timezone"],
    }

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def call(self, params: str | dict, **kwargs: Any) -> str:
        args = self._verify_json_format_args(params)
        self.calls.append(args)
        return f"noon in {args['timezone']}"


class Watcher:
    """A plugin on all four points; it refuses Mars and reports each result it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def run_started(self, run_id: str, prompt: str, model: str, tools: list[str]) -> None:
        self.seen.append(("run_started", {"run_id": run_id, "prompt": prompt, "tools": tools}))

    @hookimpl
    def before_tool_call(self, name: str, arguments: dict[str, Any], run_id: str) -> str | None:
        self.seen.append(("before_tool_call", {"name": name, "arguments": arguments}))
        return "no clocks on Mars" if arguments["timezone"] == "Mars" else None

    @hookimpl
    def after_tool_call(self, name: str, result: str, ok: bool, run_id: str) -> str:
        self.seen.append(("after_tool_call", {"name": name, "result": result, "ok": ok}))
        return f"saw {name}: {result}"

    @hookimpl
    def run_finished(self, run_id: str, status: str, answer: str) -> None:
        self.seen.append(("run_finished", {"run_id": run_id, "status": status, "answer": answer}))


class Broken:
    """A plugin whose hooks raise; the old two-argument `before_tool_call` form still works."""

    @hookimpl
    def before_tool_call(self, name: str, arguments: dict[str, Any]) -> str | None:
        if arguments["timezone"] == "UTC":
            raise RuntimeError("rules file missing")
        return None

    @hookimpl
    def run_started(self) -> None:
        raise ValueError("bad\x1b[2J state")


def scripted_run(
    tokenizer: PreTrainedTokenizerFast, outputs: list[str], *plugins: object
) -> tuple[list[Event], Clock]:
    clock = Clock()
    llm = ScriptedLLM(tokenizer, list(outputs), thinking=False)
    hooks = plugin_manager(*plugins)
    assistant = build_assistant(Settings(), llm, Toolset([ToolEntry(clock, "test")]), hooks)
    info = RunInfo(model="scripted", backend="scripted", thinking=False, tools=["clock"])
    events = list(run_events(assistant, [{"role": "user", "content": "What time is it?"}], info))
    assert not llm.outputs
    return events, clock


def test_a_plugin_is_called_at_the_four_points(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    watcher = Watcher()
    outputs = [
        call("clock", {"timezone": "Mars"}),
        call("clock", {"timezone": "Asia/Tokyo"}),
        "It is noon in Tokyo.",
    ]
    events, clock = scripted_run(qwen3_tokenizer, outputs, watcher)
    run_id = next(e.run_id for e in events if isinstance(e, RunStarted))
    assert run_id.startswith("r-")
    assert clock.calls == [{"timezone": "Asia/Tokyo"}]
    assert watcher.seen == [
        ("run_started", {"run_id": run_id, "prompt": "What time is it?", "tools": ["clock"]}),
        ("before_tool_call", {"name": "clock", "arguments": {"timezone": "Mars"}}),
        ("before_tool_call", {"name": "clock", "arguments": {"timezone": "Asia/Tokyo"}}),
        ("after_tool_call", {"name": "clock", "result": "noon in Asia/Tokyo", "ok": True}),
        (
            "run_finished",
            {"run_id": run_id, "status": "answered", "answer": "It is noon in Tokyo."},
        ),
    ]
    results = [(e.ok, e.content) for e in events if isinstance(e, ToolResult)]
    assert results == [(False, "Error: no clocks on Mars"), (True, "noon in Asia/Tokyo")]
    # What after_tool_call returned is a notice, shown after the result it is about.
    kinds = [(type(e).__name__, getattr(e, "message", "")) for e in events]
    shown = kinds.index(("Notice", "saw clock: noon in Asia/Tokyo"))
    assert [k for k, _ in kinds[shown - 1 : shown + 1]] == ["ToolResult", "Notice"]


def test_a_plugin_that_raises_refuses_the_call_or_is_a_notice(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    outputs = [
        call("clock", {"timezone": "UTC"}),
        call("clock", {"timezone": "Oslo"}),
        "Ok.",
    ]
    events, clock = scripted_run(qwen3_tokenizer, outputs, Broken())
    assert clock.calls == [{"timezone": "Oslo"}]
    results = [(e.ok, e.content) for e in events if isinstance(e, ToolResult)]
    assert results == [
        (
            False,
            "Error: a before_tool_call hook failed: RuntimeError: rules file missing; "
            "the call was not run",
        ),
        (True, "noon in Oslo"),
    ]
    notices = [e for e in events if isinstance(e, Notice)]
    assert [(n.kind, n.message) for n in notices] == [
        ("hook", "a run_started hook failed: ValueError: bad␛[2J state")
    ]
    assert next(e.status for e in events if isinstance(e, RunFinished)) == "answered"
