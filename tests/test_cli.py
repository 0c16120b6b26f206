"""The command line as a user meets it: tool commands, bad input, offline model."""

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from agent.cli import cli
from tests.clirun import agent_argv, agent_cli, agent_env

FLAGS_BEFORE_CLICK = Path(__file__).parent / "fixtures" / "cli_flags.json"


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert lines and lines[-1].startswith("error: "), stderr
    return lines[-1]


def _leaf_commands(group: click.Group, path: tuple[str, ...] = ()) -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(_leaf_commands(command, (*path, name)))
        else:
            found[" ".join((*path, name))] = command
    return found


def test_every_command_keeps_the_flags_and_arguments_it_had() -> None:
    # The flags of each command as the argparse CLI had them, recorded before the move to click.
    before = json.loads(FLAGS_BEFORE_CLICK.read_text())
    now = {}
    for path, command in _leaf_commands(cli).items():
        params = [p for p in command.params if p.name != "help"]
        options = sorted(
            o for p in params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts
        )
        arguments = [p.name for p in params if isinstance(p, click.Argument)]
        now[path] = {"options": [o for o in options if o != "-h"], "arguments": arguments}
    assert set(now) >= set(before)
    for path, had in before.items():  # new flags may come; none of these may go or change
        assert set(now[path]["options"]) >= set(had["options"]), path
        assert now[path]["arguments"] == had["arguments"], path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "hi", "--frobnicate"], "error: No such option '--frobnicate' (see"),
        (["chat", "--resume"], "error: Option '--resume' requires an argument"),
        (["run", "hi", "--threads", "two"], "error: Invalid value for '--threads': 'two'"),
        (["tools", "list", "--tools", "time", "--no-tools"], "error: --tools and --no-tools"),
        (["tools", "frobnicate"], "error: No such command 'frobnicate'"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    done = agent_cli(*args, home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(expected), done.stderr
    assert "--help')" in done.stderr


def test_tools_list_names_every_tool_and_its_source(tmp_path: Path) -> None:
    done = agent_cli("tools", "list", "--json", home=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in map(json.loads, done.stdout.splitlines())}
    assert rows["time-get_current_time"]["source"] == "mcp:time"
    assert rows["fetch-fetch"]["source"] == "mcp:fetch"
    assert rows["code_interpreter"]["source"] == "builtin"
    assert all(row["description"] for row in rows.values())


@pytest.mark.slow
def test_tools_call_prints_the_result_and_exit_code_follows_errors(tmp_path: Path) -> None:
    done = agent_cli(
        "tools", "call", "code_interpreter", '{"code": "print(2**100)"}', home=tmp_path
    )
    assert (done.returncode, done.stdout.strip()) == (0, str(2**100))
    failed = agent_cli("tools", "call", "code_interpreter", '{"code": "1/0"}', home=tmp_path)
    assert failed.returncode == 1
    assert "ZeroDivisionError" in failed.stdout


def test_tools_call_time_server(tmp_path: Path) -> None:
    done = agent_cli(
        "tools", "call", "time-get_current_time", '{"timezone": "Asia/Tokyo"}', home=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["datetime"].endswith("+09:00")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tools", "call", "no_such_tool", "{}"], "no tool named 'no_such_tool'"),
        (["tools", "call", "code_interpreter", "{not json"], "must be a JSON object"),
        (["tools", "call", "code_interpreter", "[1, 2]"], "must be a JSON object"),
        (["run", "hi", "--temperature", "-1"], "--temperature must be >= 0"),
        (["run", "hi", "--max-steps", "0"], "--max-steps must be >= 1"),
        (["run", "hi", "--max-repeats", "0"], "--max-repeats must be >= 1"),
        (["run"], "no task: give it as an argument"),
        (
            ["tools", "list", "--sandbox", "docker"],
            "sandbox must be one of auto, bubblewrap, landlock",
        ),
        (["run", "hi", "--model", "./no/such/model"], "model directory ./no/such/model not found"),
        (
            ["run", "hi", "--model-server", "http://127.0.0.1:9/v1", "--mcp-config", "/no.json"],
            "MCP config /no.json: file not found",
        ),
    ],
)
@pytest.mark.slow
def test_user_mistakes_give_one_line_and_exit_2(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    done = agent_cli(*args, home=tmp_path)
    assert done.returncode == 2
    assert expected in one_error_line(done.stderr)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"mcpServers": {"time": {"command": "uvx", "argz": []}}}', "argz"),
        ('{"mcpServers": {"time": {"args": ["x"]}}}', "command"),
    ],
)
def test_bad_mcp_config_is_one_clear_line(tmp_path: Path, content: str, expected: str) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(content)
    done = agent_cli("tools", "list", "--mcp-config", str(config), home=tmp_path)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert str(config) in line and expected in line


@pytest.mark.slow
def test_unavailable_server_is_reported_and_others_go_on(tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    servers = {
        "ghost": {"command": "no-such-mcp-server-cmd"},
        "time": {"command": "uvx", "args": ["mcp-server-time"]},
    }
    config.write_text(json.dumps({"mcpServers": servers}))
    done = agent_cli("tools", "list", "--json", "--mcp-config", str(config), home=tmp_path)
    assert done.returncode == 0
    assert "ghost" in done.stderr and "no-such-mcp-server-cmd" in done.stderr
    names = [json.loads(line)["name"] for line in done.stdout.splitlines()]
    assert "time-get_current_time" in names
    strict = agent_cli("tools", "list", "--strict-mcp", "--mcp-config", str(config), home=tmp_path)
    assert strict.returncode == 2
    assert "no-such-mcp-server-cmd" in one_error_line(strict.stderr)


@pytest.mark.slow
def test_offline_without_weights_says_how_to_pass_a_directory(tmp_path: Path) -> None:
    # The hub is pointed at a closed port on 127.0.0.1: nothing leaves the machine.
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    done = agent_cli("run", "hi", "--model", "Qwen/Qwen3-0.6B-GPTQ-Int8", home=tmp_path, env=env)
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "Qwen/Qwen3-0.6B-GPTQ-Int8" in line and "--model DIR" in line
    offline = agent_cli("run", "hi", home=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2
    assert "--model DIR" in one_error_line(offline.stderr)


def test_nothing_written_to_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    done = agent_cli(
        "tools",
        "call",
        "code_interpreter",
        "{\"code\": \"open('out.txt', 'w').write('x')\"}",
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    assert list(cwd.iterdir()) == []
    assert list((tmp_path / "home" / "runs").glob("*/work/out.txt"))


# Runs a command as a child subreaper (PR_SET_CHILD_SUBREAPER): whatever the command leaves
# running is re-parented here, not to init, so only the command's own leftovers are seen, not
# the processes of tests running beside it.
SUBREAPER = """
import ctypes, json, subprocess, sys
import psutil
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
code = subprocess.call(sys.argv[1:])
left = []
for process in psutil.Process().children(recursive=True):
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            left.append(process.cmdline())
    except psutil.Error:
        pass
print(json.dumps({"code": code, "left": left}))
"""


def test_no_child_process_outlives_a_command(tmp_path: Path) -> None:
    """`agent tools call` starts the MCP servers and a kernel; none is left when it ends."""
    command = agent_argv("tools", "call", "code_interpreter", '{"code": "print(1)"}')
    done = subprocess.run(
        [sys.executable, "-c", SUBREAPER, *command],
        capture_output=True,
        text=True,
        env=agent_env(tmp_path),
        timeout=300,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0, done.stderr
    assert report["left"] == []
