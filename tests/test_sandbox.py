"""The sandboxed code interpreter, called as the model calls it (`invoke_tool`).

Every isolation test runs in both sandboxes: bubblewrap (the default) and Landlock + seccomp
(the fallback where bubblewrap does not work), forced with `KernelOptions(sandbox=...)`.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from agent.sandbox import detect as sb
from agent.sandbox import limits as limits_mod
from agent.tools.code_interpreter import CodeInterpreter, KernelOptions
from agent.tools.invoke import ToolOutcome, invoke_tool

MakeTool = Callable[..., CodeInterpreter]


@pytest.fixture(params=["bubblewrap", "landlock"])
def mechanism(request: pytest.FixtureRequest) -> str:
    assert sb.detect(request.param).mechanism == request.param, sb.detect(request.param).note
    return str(request.param)


@pytest.fixture
def make_tool(tmp_path: Path, mechanism: str) -> Iterator[MakeTool]:
    tools: list[CodeInterpreter] = []

    def make(
        timeout_s: float = 10,
        output_limit: int = 20_000,
        image_limit: int = 5_000_000,
        **kw: object,
    ) -> CodeInterpreter:
        options = KernelOptions(sandbox=mechanism, **kw)  # type: ignore[arg-type]
        tool = CodeInterpreter(
            tmp_path / "run",
            timeout_s=timeout_s,
            output_limit=output_limit,
            image_limit=image_limit,
            options=options,
        )
        tools.append(tool)
        return tool

    yield make
    for tool in tools:
        tool.close()


def run(tool: CodeInterpreter, code: str) -> ToolOutcome:
    return invoke_tool(tool, json.dumps({"code": code}), limit=10**8)


def timed(tool: CodeInterpreter, code: str) -> tuple[ToolOutcome, float]:
    started = time.monotonic()
    outcome = run(tool, code)
    return outcome, time.monotonic() - started


def test_reading_outside_the_work_dir_fails(make_tool: MakeTool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    tool = make_tool()
    outcome = run(tool, f"print(open({str(secret)!r}).read())")
    assert not outcome.ok and "s3cret" not in outcome.content
    assert "FileNotFoundError" in outcome.content or "PermissionError" in outcome.content
    home = str(Path.home())
    listing = run(tool, f"import os; print(os.path.isdir({home!r}) and os.listdir({home!r}))")
    assert ".bashrc" not in listing.content and "secret" not in listing.content


def test_writing_outside_the_work_dir_fails(make_tool: MakeTool, tmp_path: Path) -> None:
    tool = make_tool()
    for target in (tmp_path / "escape.txt", Path("/usr/x"), Path("/tmp/x"), Path("/x")):
        outcome = run(tool, f"open({str(target)!r}, 'w').write('x')")
        assert not outcome.ok, target
        assert not target.exists()
    assert run(tool, "open('inside.txt', 'w').write('ok')").ok
    assert (tmp_path / "run" / "inside.txt").read_text() == "ok"


@pytest.fixture
def tcp_server() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    yield server.getsockname()[1]
    server.close()


def test_tcp_to_localhost_fails(make_tool: MakeTool, tcp_server: int) -> None:
    code = f"import socket; socket.create_connection(('127.0.0.1', {tcp_server}), timeout=2)"
    outcome = run(make_tool(), code)
    assert not outcome.ok
    assert any(
        error in outcome.content for error in ("ConnectionRefused", "OSError", "PermissionError")
    )


def test_udp_to_localhost_does_not_arrive(make_tool: MakeTool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.settimeout(1)
        port = server.getsockname()[1]
        send = f"sendto(b'x', ('127.0.0.1', {port}))"
        code = f"import socket; socket.socket(type=socket.SOCK_DGRAM).{send}"
        run(make_tool(), code)
        with pytest.raises(TimeoutError):
            server.recv(10)


def test_code_network_lets_the_connection_through(make_tool: MakeTool, tcp_server: int) -> None:
    code = f"import socket; socket.create_connection(('127.0.0.1', {tcp_server}), timeout=2)"
    outcome = run(make_tool(network=True), code)
    assert outcome.ok, outcome.content


class UnixServers:
    """Unix socket servers outside the sandbox, each answering b"secret" to whoever connects:
    root-only and world-writable pathname sockets, and an abstract one."""

    def __init__(self, base: Path) -> None:
        private, public = base / "private", base / "public"
        private.mkdir(mode=0o700)
        public.mkdir(mode=0o755)
        self.addresses = {
            "owner-only": str(private / "owner.sock"),
            "world-writable": str(public / "open.sock"),
            "abstract": f"\0agent-test-{os.getpid()}-{time.monotonic_ns()}",
        }
        self.servers = []
        self.connections = 0
        for name, address in self.addresses.items():
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(address)
            if name != "abstract":
                os.chmod(address, 0o600 if name == "owner-only" else 0o777)
            server.listen()
            server.settimeout(0.1)
            self.servers.append(server)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for server in self.servers:
                try:
                    connection, _ = server.accept()
                except (TimeoutError, OSError):
                    continue
                self.connections += 1
                connection.sendall(b"secret")
                connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for server in self.servers:
            server.close()


@pytest.fixture
def unix_servers() -> Iterator[UnixServers]:
    base = Path(tempfile.mkdtemp(prefix="agent-sockets-"))  # outside every sandbox
    servers = UnixServers(base)
    yield servers
    servers.close()
    shutil.rmtree(base)


@pytest.mark.parametrize("network", [False, True], ids=["network-off", "network-on"])
def test_no_unix_socket_outside_is_reachable(
    make_tool: MakeTool, unix_servers: UnixServers, network: bool
) -> None:
    code = (
        "import socket\n"
        f"for name, address in {unix_servers.addresses!r}.items():\n"
        "    try:\n"
        "        s = socket.socket(socket.AF_UNIX)\n"
        "        s.connect(address)\n"
        "        print(name, 'REACHED', s.recv(10))\n"
        "    except OSError as exc:\n"
        "        print(name, 'refused', type(exc).__name__)\n"
    )
    tool = make_tool(network=network)
    outcome = run(tool, code)
    assert outcome.ok, outcome.content
    assert "REACHED" not in outcome.content and "secret" not in outcome.content
    tried = [line.split()[0] for line in outcome.content.splitlines() if line.strip()]
    assert sorted(tried) == sorted(unix_servers.addresses)
    assert unix_servers.connections == 0
    assert run(tool, "print(1 + 1)").content.strip() == "2"  # the kernel's own ipc still works


def test_secrets_in_the_environment_are_not_visible(
    make_tool: MakeTool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_TEST_API_KEY", "sk-secret")
    outcome = run(make_tool(), "import os; print(sorted(os.environ))")
    assert outcome.ok
    assert "AGENT_TEST_API_KEY" not in outcome.content and "sk-secret" not in outcome.content


def live_descendants(process: psutil.Process) -> list[psutil.Process]:
    return [p for p in process.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_fork_bomb_is_contained_and_next_call_works(make_tool: MakeTool) -> None:
    limits = sb.Limits(processes=64)
    tool = make_tool(timeout_s=5, limits=limits)
    assert run(tool, "alive = True").ok
    assert tool._kernel is not None
    kernel = tool._kernel.process
    outcome, took = timed(tool, "import os\nwhile True:\n    os.fork()")
    assert not outcome.ok
    assert took < 5 + 2 + 5  # the timeout, the interrupt, killing what the bomb left
    if tool._kernel is not None:  # the kernel lived: nothing the bomb made is left running
        assert live_descendants(kernel) == []
        assert run(tool, "print(alive)").content.strip() == "True"  # its state is kept
    threads = "import threading; t = threading.Thread(target=print, args=('works',)); t.start()"
    assert run(tool, threads + "; t.join()").content.strip() == "works"


BUSY_THREADS = 200  # a desktop session runs hundreds: browser, editor, language servers
_BUSY = """
import os, sys, threading, time
if os.geteuid() == 0:  # the uid the kernel runs as: nobody
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
stop = threading.Event()
for _ in range({count}):
    threading.Thread(target=stop.wait, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def busy_uid() -> Iterator[int]:
    """BUSY_THREADS threads of the uid the kernel will run as (nobody when the tests run as
    root), running until the test ends: what made RLIMIT_NPROC refuse to start the kernel."""
    busy = subprocess.Popen(
        [sys.executable, "-c", _BUSY.format(count=BUSY_THREADS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert busy.stdout is not None and busy.stdout.readline().strip() == "ready"
        yield psutil.Process(busy.pid).uids().real
    finally:
        busy.kill()
        busy.wait()


def test_the_kernel_starts_beside_hundreds_of_threads_of_its_uid(
    make_tool: MakeTool, busy_uid: int
) -> None:
    uid = sb.NOBODY if os.geteuid() == 0 else os.getuid()
    assert busy_uid == uid and limits_mod.tasks_of_uid(uid) > BUSY_THREADS
    tool = make_tool()
    outcome = run(tool, "import subprocess; print(6 * 7, subprocess.run(['true']).returncode)")
    assert outcome.ok, outcome.content
    assert outcome.content.strip() == "42 0"


@pytest.fixture
def no_cgroup(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A host where no cgroup can be made and there is no systemd user manager (a container
    with a read-only /sys/fs/cgroup): the mechanisms are found again with those refused."""

    def refused(kind: str, limits: sb.Limits) -> list[Path]:
        raise OSError(f"{kind}: refused for this test")

    monkeypatch.setattr(limits_mod, "_new_cgroups", refused)
    monkeypatch.setattr(limits_mod, "_try_systemd_scope", lambda: "no systemd for this test")
    sb.detect.cache_clear()
    limits_mod.find_mechanism.cache_clear()
    yield
    sb.detect.cache_clear()
    limits_mod.find_mechanism.cache_clear()


def test_without_a_cgroup_the_kernel_still_starts_on_a_busy_host(
    no_cgroup: None, make_tool: MakeTool, busy_uid: int
) -> None:
    tool = make_tool()
    in_force = tool.sandbox.limits
    namespaced = tool.sandbox.mechanism == "bubblewrap" and os.geteuid() != 0
    assert in_force.kind == ("user namespace" if namespaced else "uid count")
    assert run(tool, "print(6 * 7)").content.strip() == "42"
    summary = tool.sandbox.summary(network=False, limits=sb.Limits())
    if not namespaced:
        assert "processes: 128 beyond the user's own count (no cgroup here)" in summary
        assert any("share that headroom" in gap for gap in tool.sandbox.missing)


@pytest.mark.slow
def test_a_fork_bomb_in_one_kernel_leaves_another_working(make_tool: MakeTool) -> None:
    bombed, other = make_tool(timeout_s=5, limits=sb.Limits(processes=64)), make_tool()
    assert run(bombed, "1").ok and run(other, "state = 'kept'").ok
    own_count = bombed.sandbox.limits.kind != "uid count"  # else the uid's headroom is shared
    with ThreadPoolExecutor(1) as pool:
        bomb = pool.submit(run, bombed, "import os\nwhile True:\n    os.fork()")
        time.sleep(1)  # the bomb is at its limit
        forks = "import subprocess; print(subprocess.run(['echo', 'forked']).stdout)"
        during = run(other, forks if own_count else "print(state)")
        assert not bomb.result().ok
    assert during.ok, during.content
    assert run(other, "print(state)").content.strip() == "kept"
    for tool in (bombed, other):  # both start processes again at once
        again = run(tool, "import subprocess; print(subprocess.run(['true']).returncode)")
        assert again.content.strip() == "0", again.content


def test_the_kernel_runs_in_a_cgroup_of_its_own_with_its_limits(make_tool: MakeTool) -> None:
    tool = make_tool(limits=sb.Limits(processes=64, memory_mb=512))
    assert run(tool, "1").ok and tool._kernel is not None and tool._kernel.limits is not None
    in_force, cgroups = tool.sandbox.limits, tool._kernel.limits.cgroups
    if not in_force.kind.startswith("cgroup"):  # a systemd scope, a namespace, the uid count
        assert cgroups == []
        return
    written = {
        file.name: file.read_text().strip()
        for cgroup in cgroups
        for file in (cgroup / "pids.max", cgroup / "memory.max", cgroup / "memory.limit_in_bytes")
        if file.exists()
    }
    assert written["pids.max"] == "64"
    if in_force.memory_cgroup:
        memory = written.get("memory.max") or written.get("memory.limit_in_bytes")
        assert memory == str(512 * 2**20)
    kernel = str(tool._kernel.process.pid)
    assert all(kernel in (cgroup / "cgroup.procs").read_text().split() for cgroup in cgroups)


@pytest.mark.slow
def test_nothing_of_a_fork_bomb_is_left_after_close(make_tool: MakeTool) -> None:
    tool = make_tool(timeout_s=5, limits=sb.Limits(processes=64))
    assert run(tool, "1").ok and tool._kernel is not None and tool._kernel.limits is not None
    connection_file = tool._kernel.manager.connection_file  # on every copy's command line
    cgroups = list(tool._kernel.limits.cgroups)
    assert (cgroups != []) == tool.sandbox.limits.kind.startswith("cgroup")
    assert not run(tool, "import os\nwhile True:\n    os.fork()").ok
    tool.close()
    assert not any(cgroup.exists() for cgroup in cgroups)
    left = []
    for process in psutil.process_iter(["cmdline", "status"]):
        if connection_file in (process.info["cmdline"] or []):
            left.append(process)
    assert [p for p in left if p.info["status"] != psutil.STATUS_ZOMBIE] == []


def test_a_forked_child_ends_with_the_code_and_its_exit_status(make_tool: MakeTool) -> None:
    tool = make_tool(timeout_s=20)
    code = (
        "import os, sys\n"
        "statuses = []\n"
        "for ending in ('done = True', 'sys.exit(7)', '1 / 0'):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        exec(ending)\n"
        "    else:\n"
        "        statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
        "if os.getpid() == kernel_pid:\n"
        "    print(statuses)\n"
    )
    assert run(tool, "import os; kernel_pid = os.getpid()").ok
    outcome = run(tool, code)
    assert outcome.ok, outcome.content
    # each child left where the code ended (a copy of the kernel going on would never be waited for)
    assert outcome.content.strip().splitlines()[-1] == "[0, 7, 1]"  # after what children print
    assert run(tool, "print(kernel_pid == os.getpid())").content.strip() == "True"


def test_processes_never_outlive_the_call_that_started_them(make_tool: MakeTool) -> None:
    tool = make_tool()
    code = (
        "import subprocess\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "shell = 'sleep 60 & echo $!; exec sleep 60'  # a new session, and a grandchild\n"
        "escaped = subprocess.Popen(['setsid', 'sh', '-c', shell], stdout=subprocess.PIPE)\n"
        "escaped.stdout.readline()  # the grandchild is running once its pid is printed\n"
        "print(child.pid)"
    )
    outcome = run(tool, code)
    assert outcome.ok, outcome.content
    assert "stopped 3 processes the code left running" in outcome.content
    assert tool._kernel is not None
    assert live_descendants(tool._kernel.process) == []
    assert run(tool, "print(child.poll() is not None)").content.strip() == "True"


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_close_kills_the_kernel_and_its_children(make_tool: MakeTool) -> None:
    tool = make_tool()
    assert run(tool, "x = 1").ok
    assert tool._kernel is not None
    launched = psutil.Process(tool._kernel.manager.provisioner.process.pid)  # type: ignore[attr-defined]
    pids = [launched.pid, *(p.pid for p in launched.children(recursive=True))]
    assert tool._kernel.process.pid in pids
    tool.close()
    tool.close()  # idempotent
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(pid) for pid in pids)


def test_multiprocessing_works_under_bubblewrap_with_a_private_dev_shm(tmp_path: Path) -> None:
    tool = CodeInterpreter(tmp_path / "run", options=KernelOptions(sandbox="bubblewrap"))
    try:
        code = (
            "import multiprocessing, os\n"
            "with multiprocessing.Pool(2) as pool:\n"
            "    print(pool.map(abs, [-1, -2]), os.listdir('/dev/shm'))"
        )
        outcome = run(tool, code)
    finally:
        tool.close()
    assert outcome.ok, outcome.content
    assert outcome.content.startswith("[1, 2] ")
    assert not any(name.startswith("mp-") for name in os.listdir("/dev/shm"))


def test_ten_times_the_memory_limit_is_stopped_and_reported(make_tool: MakeTool) -> None:
    tool = make_tool(limits=sb.Limits(memory_mb=512))
    outcome = run(tool, "x = bytearray(10 * 512 * 2**20)")
    assert not outcome.ok
    assert "MemoryError" in outcome.content or "memory" in outcome.content
    assert run(tool, "print('works')").content.strip() == "works"


def test_file_size_is_limited(make_tool: MakeTool) -> None:
    tool = make_tool(limits=sb.Limits(file_size_mb=1))
    outcome = run(tool, "open('big', 'wb').write(b'x' * 2 * 2**20)")
    assert not outcome.ok
    assert "File too large" in outcome.content


@pytest.mark.slow
@pytest.mark.parametrize("code", ["while True: pass", "sum(range(10**10))"])
def test_loops_are_stopped_within_timeout_plus_2s(make_tool: MakeTool, code: str) -> None:
    tool = make_tool(timeout_s=2, allow_unsafe=True)
    assert run(tool, "1").ok  # start the kernel outside the timed call
    outcome, took = timed(tool, code)
    assert not outcome.ok and "timed out after 2 s" in outcome.content
    assert took < 2 + 2
    assert run(tool, "print('works')").content.strip() == "works"


def test_ten_megabytes_of_output_are_capped(make_tool: MakeTool) -> None:
    outcome = run(make_tool(allow_unsafe=True), "print('x' * 10_000_000)")
    assert outcome.ok
    assert len(outcome.content) < 20_200
    assert "more characters dropped" in outcome.content


def test_exit_is_an_error_and_next_call_gets_a_fresh_kernel(make_tool: MakeTool) -> None:
    tool = make_tool(allow_unsafe=True)
    assert run(tool, "kept = 1").ok
    assert run(tool, "print(kept + 1)").content.strip() == "2"  # state is kept across calls
    outcome = run(tool, "import os; os._exit(1)")
    assert not outcome.ok and "kernel died" in outcome.content
    assert run(tool, "print('kept' in globals())").content.strip() == "False"


def test_matplotlib_figure_comes_back_as_an_image(make_tool: MakeTool, tmp_path: Path) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
    outcome = run(make_tool(timeout_s=60, allow_unsafe=True), code)
    assert outcome.ok, outcome.content
    path = Path(outcome.content.split("![image](")[1].split(")")[0])
    assert path.parent == tmp_path / "run" and path.read_bytes().startswith(b"\x89PNG")


def test_an_image_over_the_limit_is_dropped(make_tool: MakeTool, tmp_path: Path) -> None:
    code = (
        "from IPython.display import Image, display\n"
        "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + b'x' * 1000, format='png'))"
    )
    outcome = run(make_tool(image_limit=100, allow_unsafe=True), code)
    assert outcome.ok
    assert "image of 1008 bytes dropped" in outcome.content
    assert not list((tmp_path / "run").glob("*.png"))


def test_without_a_sandbox_code_is_refused_unless_allowed(
    make_tool: MakeTool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sb, "detect", lambda choice: sb.Sandbox("none", (), (), note="test"))
    refused = run(make_tool(), "print(1)")
    assert not refused.ok and "--unsafe-code" in refused.content
    allowed = run(make_tool(allow_unsafe=True), "import os; print(os.getpid() != 1)")
    assert allowed.ok and allowed.content.strip() == "True"


def test_kernel_uses_ipc_not_tcp(make_tool: MakeTool) -> None:
    tool = make_tool()
    assert run(tool, "1").ok
    assert tool._kernel is not None
    assert tool._kernel.manager.transport == "ipc"
    info = json.loads(Path(tool._kernel.manager.connection_file).read_text())
    assert info["transport"] == "ipc" and os.path.isabs(info["ip"])


def test_doctor_says_which_sandbox_is_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    monkeypatch.setenv("AGENT_HOME", str(tmp_path))
    (tmp_path / "mcp.json").write_text('{"mcpServers": {"x": {"command": "no-such-cmd-xyz"}}}')
    code = main(["doctor", "--json", "--mcp-config", str(tmp_path / "mcp.json")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    checks = {row["name"]: row for row in rows}
    assert checks["sandbox"]["detail"].startswith(sb.detect().summary(network=False))
    assert any(row["name"].strip() == "protects" for row in rows)
    assert checks["mcp x"]["ok"] is False and "not on PATH" in checks["mcp x"]["detail"]
    assert code == 1


def test_auto_falls_back_to_landlock_where_bubblewrap_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sb, "_try_bubblewrap", lambda: "bubblewrap does not work here: test")
    sandbox = sb.detect.__wrapped__("auto")  # type: ignore[attr-defined]
    assert sandbox.mechanism == "landlock"
    assert sandbox.note == "bubblewrap does not work here: test"
    assert any(item.startswith("filesystem (Landlock ABI") for item in sandbox.protections)
    assert any("seccomp: Unix and netlink sockets only" in item for item in sandbox.protections)
    assert any("no PID namespace" in item for item in sandbox.missing)
    assert sandbox.summary(network=False) == "landlock, network off"


def test_doctor_states_the_landlock_sandbox_and_its_gaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    monkeypatch.setenv("AGENT_HOME", str(tmp_path))
    main(["doctor", "--json", "--sandbox", "landlock", "--mcp-config", str(tmp_path / "none")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    in_force = sb.detect("landlock").limits
    rows = rows[[row["name"] for row in rows].index("sandbox") :]  # after the version and files
    assert rows[0] == {
        "name": "sandbox",
        "ok": True,
        "detail": "landlock, network off, " + in_force.describe(128, 2048),
    }
    assert in_force.kind in rows[0]["detail"] or "no cgroup here" in rows[0]["detail"]
    gaps = [row["detail"] for row in rows if row["name"].strip() == "does not"]
    assert any("no PID namespace" in gap for gap in gaps)
    protects = [row["detail"] for row in rows if row["name"].strip() == "protects"]
    assert any(line.startswith("Unix sockets: the code can open none") for line in protects)
    if os.geteuid() == 0:  # as root: nobody, or the effective uid root said plainly
        identity = [line for line in protects + gaps if line.startswith("identity:")]
        assert identity and ("nobody" in identity[0])


def test_an_unknown_sandbox_in_config_is_a_one_line_error(tmp_path: Path) -> None:
    from tests.clirun import agent_cli

    (tmp_path / "config.toml").write_text('sandbox = "docker"\n')
    done = agent_cli("doctor", home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: sandbox must be one of auto, bubblewrap, landlock, not 'docker'"
    ]


def test_run_header_states_the_sandbox() -> None:
    from io import StringIO

    from rich.console import Console

    from agent.events import RunStarted
    from agent.render import TerminalRenderer

    err = StringIO()
    renderer = TerminalRenderer(False, err=Console(file=err, width=200))
    renderer.show(
        RunStarted("p", "m", "local", False, ["code_interpreter"], "sandbox: x, network off")
    )
    assert "sandbox: x, network off" in err.getvalue()
