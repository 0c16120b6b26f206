"""The resident service on real parts: a real service process on a real socket, the real
`agent` command as its client, the trained tiny model, the real MCP time server, `kill -9`,
a second user, another build, a stuck service.

Every test's service is stopped when the test ends (the `service_home` fixture kills what is
left), so none outlives the test session.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.service.protocol import lock_path, socket_path
from tests.chatpty import ChatTerminal
from tests.clirun import agent_argv, agent_cli, agent_env, json_events

pytestmark = pytest.mark.slow

ON = {"AGENT_SERVICE": "auto"}
SLOW_TOOL = '''
import os
import time

from agent.plugins import tool


@tool
def slow(note: str) -> str:
    """Wait a while.

    Args:
        note: anything
    """
    time.sleep(float(os.environ.get("SLOW_TOOL_S", "60")))
    return "waited"
'''
LIGHT_CLIENT = """
import json, sys
from agent.cli import main
code = main(sys.argv[1:])
heavy = ("torch", "transformers", "qwen_agent", "mcp", "jupyter_client", "openai")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in heavy)
# VmHWM: this process's peak (ru_maxrss would count the forked parent's pages too).
status = open("/proc/self/status").read().split("VmHWM:")[1]
peak_mb = int(status.split()[0]) / 1024
print(json.dumps({"code": code, "heavy": loaded, "peak_mb": peak_mb}), file=sys.stderr)
"""


def service_paths(home: Path) -> tuple[Path, Path]:
    """The socket and lock of `home`'s service."""
    saved = os.environ.get("AGENT_HOME")
    os.environ["AGENT_HOME"] = str(home)
    try:
        return socket_path(), lock_path()
    finally:
        if saved is None:
            del os.environ["AGENT_HOME"]
        else:
            os.environ["AGENT_HOME"] = saved


def service_status(home: Path) -> dict[str, Any]:
    done = agent_cli("service", "status", "--json", home=home, env=ON, timeout=60)
    return dict(json.loads(done.stdout))


def service_pids(home: Path) -> list[int]:
    """Every live `agent.service` process of `home`."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmdline = process.info["cmdline"] or []
            env = process.info["environ"] or {}
        except psutil.Error:
            continue
        if cmdline[-2:] == ["-m", "agent.service"] and env.get("AGENT_HOME") == str(home):
            found.append(process.pid)
    return found


@pytest.fixture
def service_home(tmp_path: Path) -> Iterator[Path]:
    """An AGENT_HOME whose services are all gone when the test ends."""
    home = tmp_path / "home"
    home.mkdir()
    yield home
    agent_cli("service", "stop", home=home, env=ON, timeout=60)
    for pid in service_pids(home):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def slow_tool(tmp_path: Path) -> Path:
    path = tmp_path / "slow.py"
    path.write_text(SLOW_TOOL)
    return path


def slow_run_argv(model: Path, tool: Path, *extra: str) -> list[str]:
    """`agent run` that calls the slow tool (the first call is constrained to a tool)."""
    return agent_argv(
        "run", "--json", "--tool", str(tool), "--tools", "slow", "--require-tool",
        "--model", str(model), "--seed", "1", "--max-new-tokens", "256", *extra, "hello",
    )  # fmt: skip


def read_until(process: subprocess.Popen[str], kind: str) -> list[dict[str, Any]]:
    """The client's events up to the first of type `kind`."""
    assert process.stdout is not None
    events = []
    for line in process.stdout:
        events.append(json.loads(line))
        if events[-1]["type"] == kind:
            return events
    raise AssertionError(f"no {kind} event: {events}")


def test_a_run_starts_the_service_and_the_next_run_reuses_its_model(
    tiny_trained_gptq: Path, service_home: Path
) -> None:
    """The first run starts the service; the second finds the model and the time server
    warm (one load in the service's log), and both are in the history of the user's home."""
    for _ in range(2):
        done = agent_cli(
            "run", "--json", "--model", str(tiny_trained_gptq), "--seed", "1",
            "What time is it in Tokyo?", home=service_home, env=ON,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        events = json_events(done.stdout)
        assert events[-1]["status"] == "answered"
        result = next(e for e in events if e["type"] == "tool_result")
        stamp = json.loads(result["content"])["datetime"]
        assert events[-2]["text"] == f"The time in Tokyo is {stamp}."
    status = service_status(service_home)
    assert status["running"] and [m["model"] for m in status["models"]] == [str(tiny_trained_gptq)]
    assert {s["name"]: s["state"] for s in status["mcp_servers"]}["time"] == "running"
    assert status["runs"] == [] and status["idle_exit_in_s"] > 0
    log = agent_cli("service", "logs", home=service_home, env=ON).stdout
    assert log.count("loaded ") == 1, log
    runs = agent_cli("runs", "list", "--json", home=service_home, env=ON)
    assert [json.loads(line)["status"] for line in runs.stdout.splitlines()] == ["answered"] * 2


def test_a_warm_run_is_a_light_client(tiny_trained_gptq: Path, service_home: Path) -> None:
    """With the service up, `agent run` imports none of the model stack and stays small."""
    argv = ["run", "--model", str(tiny_trained_gptq), "--seed", "1", "What time is it in Tokyo?"]
    assert agent_cli(*argv, home=service_home, env=ON).returncode == 0
    done = subprocess.run(
        [sys.executable, "-c", LIGHT_CLIENT, *argv],
        capture_output=True,
        text=True,
        env=agent_env(service_home, ON),
        timeout=120,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    assert report["code"] == 0 and "The time in Tokyo is" in done.stdout
    assert report["heavy"] == []
    assert report["peak_mb"] < 150, report


def test_the_service_killed_mid_run_is_said_and_recorded(
    tiny_gptq: Path, service_home: Path, slow_tool: Path
) -> None:
    """`kill -9` of the service during a tool call: the client says so in one line, exits 1,
    the history has the run as interrupted; the next run starts a new service."""
    client = subprocess.Popen(
        slow_run_argv(tiny_gptq, slow_tool),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agent_env(service_home, ON),
    )
    read_until(client, "tool_call")
    [pid] = service_pids(service_home)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    out, err = client.communicate(timeout=30)
    assert time.monotonic() - killed < 5
    assert client.returncode == 1
    last = [json.loads(line) for line in out.splitlines()][-2:]
    assert last[0]["type"] == "error" and "service stopped during the run" in last[0]["message"]
    assert last[1]["type"] == "run_finished" and last[1]["status"] == "interrupted"
    assert "Traceback" not in err
    runs = agent_cli("runs", "list", "--json", home=service_home, env=ON)
    assert json.loads(runs.stdout.splitlines()[0])["status"] == "interrupted"
    again = agent_cli(
        "run", "--no-tools", "--model", str(tiny_gptq), "--max-new-tokens", "4", "hi",
        home=service_home, env=ON,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert service_pids(service_home) not in ([], [pid])


def test_ctrl_c_in_chat_cancels_the_turn_in_the_service(
    tiny_gptq: Path, service_home: Path, slow_tool: Path
) -> None:
    """Ctrl-C in `agent chat` (a real terminal) stops the turn running in the service; the
    chat goes on."""
    chat = ChatTerminal(
        "--tool", str(slow_tool), "--tools", "slow", "--require-tool", "--approve", "none",
        "--model", str(tiny_gptq), "--seed", "1", "--max-new-tokens", "256",
        home=service_home, env=ON,
    )  # fmt: skip
    chat.turn("hello", until="→ slow")
    time.sleep(0.5)
    chat.press("c")
    chat.wait_for("cancelled")
    assert chat.leave() == 0
    assert service_status(service_home)["runs"] == []


def test_another_user_is_refused(service_home: Path) -> None:
    """The socket is the user's only (mode 0600 in a private directory); and should another
    user reach it anyway, the service refuses them (SO_PEERCRED)."""
    if os.getuid() != 0:
        pytest.fail("this test switches to user nobody: run it as root (CI does)")
    assert agent_cli("service", "start", home=service_home, env=ON).returncode == 0
    sock_file, _ = service_paths(service_home)
    assert sock_file.stat().st_mode & 0o777 == 0o600
    nobody = pwd.getpwnam("nobody")
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n"
        "    print('denied'); sys.exit()\n"
        's.sendall(b\'{"op": "hello"}\\n\'); print(s.recv(4096).decode())\n'
    )

    # The probe needs only the standard library: the system's Python, which `nobody` can run
    # (this one may live under a private directory).
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable

    def as_nobody() -> str:
        return subprocess.run(
            [python, "-c", probe, str(sock_file)],
            capture_output=True,
            text=True,
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            timeout=30,
        ).stdout

    assert as_nobody().strip() == "denied"
    opened = [sock_file, *sock_file.parents][: len(sock_file.relative_to("/").parts)]
    modes = {path: path.stat().st_mode for path in opened}
    try:
        for path in opened:
            path.chmod(0o777 if path.is_dir() else 0o666)
        reply = json.loads(as_nobody())
    finally:
        for path, mode in modes.items():
            path.chmod(mode & 0o7777)
    assert reply["op"] == "error" and "another user" in reply["message"]
    assert service_status(service_home)["running"]


def test_a_service_of_another_build_is_replaced_when_idle_else_the_run_is_local(
    tiny_gptq: Path, service_home: Path, tmp_path: Path, slow_tool: Path
) -> None:
    """After an upgrade, the old service is stopped if idle and a new one started; while it
    has a run going, the new client runs in its own process and says so."""
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parents[1] / "agent", old / "agent")
    with (old / "agent" / "errors.py").open("a") as handle:
        handle.write("\n# an older build\n")
    old_env = {**ON, "PYTHONPATH": str(old)}
    busy = subprocess.Popen(
        slow_run_argv(tiny_gptq, slow_tool),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agent_env(service_home, old_env),
        cwd=tmp_path,
    )
    try:
        read_until(busy, "tool_call")
        [old_pid] = service_pids(service_home)
        local = agent_cli(
            "run", "--json", "--no-tools", "--model", str(tiny_gptq), "--max-new-tokens", "4",
            "hi", home=service_home, env=ON,
        )  # fmt: skip
        assert local.returncode == 0, local.stderr
        assert "another build" in local.stderr and "running in this process" in local.stderr
        assert service_pids(service_home) == [old_pid]
    finally:
        busy.kill()
        busy.communicate()
    # Its client gone, the old service is idle: the next run replaces it.
    deadline = time.monotonic() + 30
    while service_status(service_home)["runs"] and time.monotonic() < deadline:
        time.sleep(0.2)
    done = agent_cli(
        "run", "--no-tools", "--model", str(tiny_gptq), "--max-new-tokens", "4", "hi",
        home=service_home, env=ON,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replaced the agent service of another build" in done.stderr
    assert old_pid not in service_pids(service_home) and len(service_pids(service_home)) == 1


def test_two_clients_starting_at_once_get_one_service(service_home: Path) -> None:
    """Started at the same moment, twice: one service; a stale lock file naming a live pid
    and a stale socket file do not stop it (the lock is an flock, not a pid)."""
    sock_file, lock = service_paths(service_home)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"{os.getpid()}\n")  # a pid the system has given to a live process
    stale = socket.socket(socket.AF_UNIX)
    sock_file.parent.mkdir(parents=True, exist_ok=True)
    stale.bind(str(sock_file))
    stale.close()  # a socket file nobody listens on
    starts = [
        subprocess.Popen(
            agent_argv("service", "start"),
            stderr=subprocess.PIPE,
            text=True,
            env=agent_env(service_home, ON),
        )
        for _ in range(2)
    ]
    said = [process.communicate(timeout=60)[1] for process in starts]
    assert [process.returncode for process in starts] == [0, 0], said
    pids = service_pids(service_home)
    assert len(pids) == 1 and all(f"pid {pids[0]}" in line for line in said), said


def test_a_stuck_service_makes_the_run_local(tiny_gptq: Path, service_home: Path) -> None:
    """A service that does not answer (here: a socket that accepts and says nothing): the
    client runs in its own process and says so, instead of hanging."""
    sock_file, _ = service_paths(service_home)
    sock_file.parent.mkdir(parents=True, exist_ok=True)
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(str(sock_file))
    mute.listen(4)
    try:
        done = agent_cli(
            "run", "--no-tools", "--model", str(tiny_gptq), "--max-new-tokens", "4", "hi",
            home=service_home, env=ON, timeout=120,
        )  # fmt: skip
    finally:
        mute.close()
    assert done.returncode == 0, done.stderr
    assert "did not answer within" in done.stderr and "running in this process" in done.stderr


def test_a_malformed_request_gets_an_error_and_the_service_goes_on(service_home: Path) -> None:
    assert agent_cli("service", "start", home=service_home, env=ON).returncode == 0
    sock_file, _ = service_paths(service_home)
    for garbage in (b"not json\n", b'{"op": "turn"}\n', b'{"op": "open", "settings": 3}\n'):
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock_file))
            client.sendall(garbage)
            reply = json.loads(client.makefile().readline())
        assert reply["op"] == "error" and reply["message"], reply
    assert service_status(service_home)["running"]


def test_the_service_exits_when_idle_and_off_means_in_process(
    tiny_gptq: Path, service_home: Path
) -> None:
    env = {**ON, "AGENT_SERVICE_IDLE": "1"}
    assert agent_cli("service", "start", home=service_home, env=env).returncode == 0
    deadline = time.monotonic() + 20
    while service_pids(service_home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert service_pids(service_home) == []
    assert agent_cli("service", "status", home=service_home, env=ON).returncode == 1
    done = agent_cli(
        "run", "--no-service", "--no-tools", "--model", str(tiny_gptq), "--max-new-tokens", "4",
        "hi", home=service_home, env=ON,
    )  # fmt: skip
    assert done.returncode == 0 and service_pids(service_home) == []


def test_each_request_brings_its_own_environment(tmp_path: Path) -> None:
    """The service started by one shell does not hand its environment to the next client's
    tools: an MCP server gets the requesting client's pass-through variables."""
    from agent.config import load_settings
    from agent.service.pool import MCPPool

    server = tmp_path / "env_server.py"
    server.write_text(
        "import os\nfrom mcp.server.mcpserver import MCPServer\n"
        "server = MCPServer('env')\n"
        "@server.tool()\ndef proxy() -> str:\n    return os.environ.get('HTTPS_PROXY', 'none')\n"
        "server.run()\n"
    )
    config = tmp_path / "mcp.json"
    entry = {"command": sys.executable, "args": [str(server)]}
    config.write_text(json.dumps({"mcpServers": {"env": entry}}))
    settings = load_settings({"mcp_config": config})
    pool = MCPPool(tmp_path / "logs")
    try:
        first = pool(settings, None, {**os.environ, "HTTPS_PROXY": "http://one"}, tmp_path)
        same = pool(settings, None, {**os.environ, "HTTPS_PROXY": "http://one"}, tmp_path)
        other = pool(settings, None, {**os.environ, "HTTPS_PROXY": "http://two"}, tmp_path)
        assert first.tools[0] is same.tools[0]  # one server for one config
        assert [tool.call({}) for tool in (first.tools[0], other.tools[0])] == [
            "http://one",
            "http://two",
        ]
        assert len(pool.states()) == 2
    finally:
        pool.close()


def test_a_scheduled_job_through_the_service_loads_the_model_once(
    tiny_trained_gptq: Path, service_home: Path
) -> None:
    """Two occurrences of a job, run through the service: the model is loaded once."""
    add = agent_cli(
        "schedule", "add", "tokyo", "What time is it in Tokyo?", "--every", "1m", "--no-check",
        "--model", str(tiny_trained_gptq), "--seed", "1", home=service_home, env=ON,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    for _ in range(2):
        done = agent_cli("schedule", "run-now", "tokyo", home=service_home, env=ON)
        assert done.returncode == 0 and "tokyo: succeeded" in done.stdout, done.stderr
    log = agent_cli("service", "logs", home=service_home, env=ON).stdout
    assert log.count("loaded ") == 1, log
    runs = agent_cli("runs", "list", "--json", home=service_home, env=ON)
    assert [json.loads(line)["status"] for line in runs.stdout.splitlines()] == ["answered"] * 2


def test_a_second_client_is_told_it_waits_then_served(
    tiny_gptq: Path, service_home: Path, slow_tool: Path
) -> None:
    """Two runs at once: the second is told it waits for the model, then runs."""
    first = subprocess.Popen(
        slow_run_argv(tiny_gptq, slow_tool),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=agent_env(service_home, {**ON, "SLOW_TOOL_S": "5"}),  # the service gets this one
    )
    read_until(first, "tool_call")
    second = agent_cli(
        "run", "--no-tools", "--model", str(tiny_gptq), "--max-new-tokens", "4", "hi",
        home=service_home, env=ON,
    )  # fmt: skip
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0 and json.loads(out.splitlines()[-1])["status"] == "answered"
    assert second.returncode == 0, second.stderr
    assert "another run has the model; waiting" in second.stderr
    assert len(service_pids(service_home)) == 1


def test_a_service_leaves_a_successors_socket_alone(tmp_path: Path) -> None:
    """At exit a service removes its socket only if it is still the one it made (by inode):
    a successor's socket at the same path stays."""
    from agent.service.server import _remove_if_ours

    path = tmp_path / "service.sock"
    mine = socket.socket(socket.AF_UNIX)
    mine.bind(str(path))
    inode = path.stat().st_ino
    path.unlink()
    successor = socket.socket(socket.AF_UNIX)
    successor.bind(str(path))
    _remove_if_ours(path, inode)
    assert path.exists()
    _remove_if_ours(path, path.stat().st_ino)
    assert not path.exists()
    mine.close()
    successor.close()


def test_a_known_tool_list_does_not_wait_for_its_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server seen before: its tools are offered at once while it starts, and a call waits
    for it; one that then fails to start makes that call's error, not a hang."""
    from agent.config import load_settings
    from agent.errors import ToolError
    from agent.service.pool import MCPPool

    monkeypatch.setenv("AGENT_HOME", str(tmp_path / "home"))
    gate, broken = tmp_path / "go", tmp_path / "broken"
    server = tmp_path / "gated_server.py"
    server.write_text(
        "import pathlib, sys, time\n"
        f"gate, broken = pathlib.Path({str(gate)!r}), pathlib.Path({str(broken)!r})\n"
        "if broken.exists():\n    sys.exit(3)\n"
        "while not gate.exists():\n    time.sleep(0.05)\n"
        "from mcp.server.mcpserver import MCPServer\n"
        "server = MCPServer('gated')\n"
        "@server.tool()\ndef hello() -> str:\n    return 'hi there'\n"
        "server.run()\n"
    )
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps({"mcpServers": {"gated": {"command": sys.executable, "args": [str(server)]}}})
    )
    settings = load_settings({"mcp_config": config, "mcp_start_timeout": 30.0})
    gate.touch()
    first = MCPPool(tmp_path / "logs")
    assert [t.name for t in first(settings, None, None, tmp_path).tools] == ["gated-hello"]
    first.close()

    gate.unlink()  # the server now waits at its start until the gate opens
    later = MCPPool(tmp_path / "logs")
    try:
        tools = later(settings, None, None, tmp_path).tools
        assert [t.name for t in tools] == ["gated-hello"] and later.states() == []
        gate.touch()
        assert tools[0].call({}) == "hi there"
        assert [s["state"] for s in later.states()] == ["running"]
    finally:
        later.close()

    broken.touch()
    failing = MCPPool(tmp_path / "logs")
    try:
        tools = failing(settings, None, None, tmp_path).tools
        with pytest.raises(ToolError, match="did not start"):
            tools[0].call({})
    finally:
        failing.close()


def test_a_model_still_to_download_loads_in_the_command_itself(service_home: Path) -> None:
    """A hub model not downloaded yet is fetched by the command (its progress shows in the
    user's terminal, not in the service's log); here offline: the usual one-line error."""
    done = agent_cli(
        "run", "--no-tools", "--model", "nobody/no-such-model", "hi",
        home=service_home, env={**ON, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 2 and "no-such-model" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr and service_pids(service_home) == []


def test_a_tool_that_does_not_load_is_said_in_the_users_terminal(
    tiny_gptq: Path, service_home: Path, tmp_path: Path
) -> None:
    """The tools load in the service, but their warnings reach the user, as in-process."""
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"ghost": {"command": "no-such-command-here"}}}))
    done = agent_cli(
        "run", "--mcp-config", str(config), "--model", str(tiny_gptq), "--max-new-tokens", "4",
        "hi", home=service_home, env=ON,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "warning: MCP server 'ghost' is unavailable" in done.stderr
    assert "no-such-command-here" in done.stderr and len(service_pids(service_home)) == 1
