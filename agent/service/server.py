"""The resident service: one process per user and `AGENT_HOME` that keeps the model, the MCP
servers and the prefix cache warm, and runs sessions for the light clients on its socket.

Each connection is one session (a run, a chat, a job): its own tools and code interpreter
kernel (killed when the connection ends), the shared model and MCP servers. Turns take the
model one at a time; a client that has to wait is told so. The service exits after
`service_idle` seconds with no connection, counted on the monotonic clock (a laptop's sleep
does not count), or when asked (`agent service stop`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agent import __version__
from agent.config import load_settings
from agent.errors import AgentError
from agent.events import Event, Notice
from agent.paths import agent_home
from agent.service.protocol import (
    PROTOCOL,
    Channel,
    ProtocolError,
    build_id,
    lock_path,
    private_dir,
    settings_from_wire,
    socket_path,
)
from agent.tools.mcp_requests import ElicitationRequest, Elicited, Questions, RequestRefused

log = logging.getLogger("agent")

ACCEPT_POLL_S = 0.5
ASK_POLL_S = 0.2


@dataclass
class RunningTurn:
    """A turn in progress, as `status` lists it."""

    client_pid: int
    prompt: str
    started: float


class Service:
    """The state shared by every connection."""

    def __init__(self, idle_s: float, memory_bytes: int) -> None:
        self.idle_s = idle_s
        self.memory_bytes = memory_bytes
        self.started = time.monotonic()
        self.last_active = self.started
        self.sessions = 0  # connections with a session open: the service is not idle
        self.turns: dict[int, RunningTurn] = {}
        self.model_lock = threading.Lock()  # one model call at a time: loads and turns
        self._pool: Any = None
        self._kernels: Any = None
        self.stopping = threading.Event()
        self.open: set[Connection] = set()
        self._lock = threading.Lock()

    @property
    def pool(self) -> Any:
        """The MCP servers (`MCPPool`), made on first use: the MCP SDK's import is not in the
        way of the first `hello`."""
        with self._lock:
            if self._pool is None:
                from agent.service.pool import MCPPool

                self._pool = MCPPool(agent_home() / "logs" / "mcp")
            return self._pool

    @property
    def kernels(self) -> Any:
        """The spare code interpreter kernels (`KernelSpares`), made on first use."""
        with self._lock:
            if self._kernels is None:
                from agent.tools.code_interpreter import KernelSpares

                self._kernels = KernelSpares()
            return self._kernels

    def stop_tools(self) -> None:
        """Stop the pooled MCP servers and the spare kernels, if any started."""
        with self._lock:
            pool, self._pool = self._pool, None
            kernels, self._kernels = self._kernels, None
        if pool is not None:
            pool.close()
        if kernels is not None:
            kernels.close()

    def touch(self, sessions: int = 0) -> None:
        """A session came (+1) or went (-1), or a request came (0)."""
        with self._lock:
            self.sessions += sessions
            self.last_active = time.monotonic()

    def serve(self, connection: Connection) -> None:
        """Serve one client until it leaves; `end_connections` can hang it up meanwhile."""
        with self._lock:
            self.open.add(connection)
        try:
            connection.serve()
        finally:
            with self._lock:
                self.open.discard(connection)
            self.touch()

    def end_connections(self, wait_s: float) -> None:
        """Cancel every turn and close every session (their kernels stop), waiting `wait_s`."""
        with self._lock:
            connections = list(self.open)
        for connection in connections:
            connection.hang_up()
        deadline = time.monotonic() + wait_s
        for connection in connections:
            connection.finished.wait(max(deadline - time.monotonic(), 0.0))

    def idle_exit_in(self) -> float | None:
        """Seconds until the idle exit; None while a client has a session open."""
        with self._lock:
            if self.sessions:
                return None
            return max(self.idle_s - (time.monotonic() - self.last_active), 0.0)

    def status(self) -> dict[str, Any]:
        """What `agent service status --json` shows."""
        from agent.engine.loading import loaded_models

        idle_in = self.idle_exit_in()
        now = time.monotonic()
        return {
            "pid": os.getpid(),
            "socket": str(socket_path()),
            "version": __version__,
            "build": build_id(),
            "protocol": PROTOCOL,
            "uptime_s": round(now - self.started, 1),
            "idle_exit_in_s": None if idle_in is None else round(idle_in, 1),
            "idle_s": self.idle_s,
            "sessions": self.sessions,
            "models": [
                {
                    "model": name,
                    "device": device,
                    "engine": engine,
                    "memory_mb": round(loaded.memory_bytes / 2**20),
                }
                for name, device, engine, loaded in loaded_models()
            ],
            "mcp_servers": self._pool.states() if self._pool is not None else [],
            "spare_kernels": self._kernels.ready() if self._kernels is not None else 0,
            "runs": [
                {
                    "client_pid": turn.client_pid,
                    "prompt": turn.prompt[:200],
                    "running_s": round(now - turn.started, 1),
                }
                for turn in list(self.turns.values())
            ],
        }


def peer_uid(sock: socket.socket) -> tuple[int, int]:
    """The connecting process's pid and uid, from the kernel (SO_PEERCRED)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", data)
    return pid, uid


class Connection:
    """One client: a reader thread sorts what it sends; this thread answers requests."""

    def __init__(self, service: Service, sock: socket.socket, client_pid: int) -> None:
        self.service = service
        self.channel = Channel(sock)
        self.client_pid = client_pid
        self.requests: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.answers: queue.Queue[dict[str, Any]] = queue.Queue()
        self.elicited: queue.Queue[dict[str, Any]] = queue.Queue()
        self._sending = threading.Lock()  # events, and questions from the servers' requests
        self.stop = threading.Event()  # the current turn is cancelled (or the client left)
        self.finished = threading.Event()
        self.session: Any = None
        self.cwd = str(agent_home())

    def serve(self) -> None:
        """Answer requests until the client leaves or the service stops."""
        threading.Thread(target=self._read, daemon=True, name="service-read").start()
        with contextlib.ExitStack() as resources:
            while True:
                request = self.requests.get()
                if request is None:
                    break
                self.service.touch()
                try:
                    if not self._handle(request, resources):
                        break
                except AgentError as exc:
                    self._send({"op": "error", "message": str(exc), "exit_code": exc.exit_code})
                except Exception as exc:  # a bad request must not take the service down
                    log.exception("request %s failed", request.get("op"))
                    message = f"the agent service failed: {type(exc).__name__}: {exc}"
                    self._send({"op": "error", "message": message, "exit_code": 1})
        self.channel.close()
        self.finished.set()

    def _read(self) -> None:
        try:
            while (message := self.channel.receive()) is not None:
                if message["op"] == "cancel":
                    self.stop.set()
                elif message["op"] == "answer":
                    self.answers.put(message)
                elif message["op"] == "elicited":
                    self.elicited.put(message)
                else:
                    self.requests.put(message)
        except (OSError, ProtocolError) as exc:
            log.info("client %d: %s", self.client_pid, exc)
            with contextlib.suppress(OSError):
                self.channel.send({"op": "error", "message": f"bad message: {exc}", "exit_code": 1})
        self.stop.set()
        self.requests.put(None)

    def hang_up(self) -> None:
        """End the connection from the service's side (it is stopping)."""
        self.stop.set()
        with contextlib.suppress(OSError):
            self.channel.sock.shutdown(socket.SHUT_RDWR)

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            with self._sending:
                self.channel.send(message)
            return True
        except OSError:  # the client left: its turn is cancelled by the reader
            self.stop.set()
            return False

    def _handle(self, request: dict[str, Any], resources: contextlib.ExitStack) -> bool:
        """Answer one request; False ends the connection."""
        op = request["op"]
        if op == "hello":
            self._send(
                {
                    "op": "hello",
                    "protocol": PROTOCOL,
                    "build": build_id(),
                    "version": __version__,
                    "pid": os.getpid(),
                }
            )
        elif op == "status":
            self._send({"op": "status", **self.service.status()})
        elif op == "stop":
            if request.get("when") == "idle" and self.service.turns:
                self._send({"op": "busy"})
            else:
                self._send({"op": "stopping"})
                self.service.stopping.set()
                return False
        elif op == "open" and self.session is None:
            self._open(request, resources)
        elif op == "turn" and self.session is not None:
            self._turn(request)
        elif op == "prompt" and self.session is not None:
            messages = self.session.get_prompt(
                str(request.get("server")),
                str(request.get("name")),
                {str(k): str(v) for k, v in dict(request.get("arguments") or {}).items()},
            )
            self._send({"op": "prompt", "messages": messages})
        elif op == "resource" and self.session is not None:
            contents = self.session.read_resource(
                str(request.get("server")), str(request.get("uri"))
            )
            self._send({"op": "resource", "contents": [item.to_dict() for item in contents]})
        else:
            raise ProtocolError(f"unexpected request {op!r}")
        return True

    def _open(self, request: dict[str, Any], resources: contextlib.ExitStack) -> None:
        from agent.engine.loading import unload_beyond
        from agent.session import open_local_session

        settings = settings_from_wire(request.get("settings"))
        environ = {str(k): str(v) for k, v in dict(request.get("env") or {}).items()}
        self.cwd = str(request.get("cwd") or self.cwd)
        ask = self._ask if request.get("ask") else None
        questions = (
            Questions(approve=self._ask_about_sampling, elicit=self._elicit)
            if request.get("questions")
            else None
        )
        self.service.touch(sessions=+1)
        resources.callback(self.service.touch, sessions=-1)
        with self._model():
            self.session = resources.enter_context(
                open_local_session(
                    settings, ask, environ, self.service.pool, self.service.kernels, questions
                )
            )
            for name in unload_beyond(self.service.memory_bytes):
                log.info("unloaded %s (over the service's memory budget)", name)
        problems = list(self.session.toolset.problems)  # shown by the client, as in-process
        self._send({"op": "opened", "tools": self.session.tool_names, "problems": problems})

    def _turn(self, request: dict[str, Any]) -> None:
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ProtocolError("a turn needs its messages")
        limit = request.get("time_limit_s")
        self.stop.clear()
        prompt = str(messages[-1].get("content", "")) if isinstance(messages[-1], dict) else ""
        key = id(self)
        with self._model():
            self.service.turns[key] = RunningTurn(self.client_pid, prompt, time.monotonic())
            try:
                with _working_directory(self.cwd):
                    result = self.session.turn(
                        messages, self._show, limit if limit else None, stop=self.stop
                    )
            finally:
                self.service.turns.pop(key, None)
        self._send(
            {"op": "done", "status": result.status, "sent": result.sent, "added": result.added}
        )

    @contextlib.contextmanager
    def _model(self) -> Any:
        """The model, waited for (and the client told so) while another client has it."""
        if not self.service.model_lock.acquire(blocking=False):
            self._show(Notice(kind="waiting", message="another run has the model; waiting"))
            self.service.model_lock.acquire()
        try:
            yield
        finally:
            self.service.model_lock.release()

    def _show(self, event: Event) -> None:
        self._send({"op": "event", "event": event.to_dict()})

    def _ask(self, name: str, arguments: dict[str, Any], about: str = "tool") -> str:
        """Ask the client about a tool call (or a server's sampling request); no answer (it
        left, or cancelled) is a no; a `refused` answer (nobody there) RequestRefused."""
        asked = {"op": "ask", "name": name, "arguments": arguments, "about": about}
        answer = self._question(asked, self.answers) or {}
        if answer.get("refused"):
            raise RequestRefused(str(answer["refused"]))
        return str(answer.get("answer", "n"))

    def _ask_about_sampling(self, name: str, arguments: dict[str, Any]) -> str:
        return self._ask(name, arguments, about="sampling")

    def _elicit(self, request: ElicitationRequest) -> Elicited:
        """Ask the client to have the user fill in a server's form; no answer is a cancel."""
        answer = self._question({"op": "elicit", **request.to_dict()}, self.elicited)
        if answer is None:
            return Elicited("cancel")
        if answer.get("refused"):
            raise RequestRefused(str(answer["refused"]))
        content = answer.get("content")
        return Elicited(
            str(answer.get("action", "cancel")),
            dict(content) if isinstance(content, dict) else None,
        )

    def _question(
        self, message: dict[str, Any], answers: queue.Queue[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Send a question to the client and wait for its answer; None when the client left
        or the turn was cancelled."""
        if not self._send(message):
            return None
        while not self.stop.is_set():
            with contextlib.suppress(queue.Empty):
                return answers.get(timeout=ASK_POLL_S)
        return None


@contextlib.contextmanager
def _working_directory(path: str) -> Any:
    """Run in the client's directory (turns run one at a time, so this is safe)."""
    before = os.getcwd()
    with contextlib.suppress(OSError):
        os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _accept(service: Service, sock: socket.socket) -> None:
    pid, uid = peer_uid(sock)
    if uid != os.getuid():
        log.warning("refused a connection from uid %d (pid %d): not this user", uid, pid)
        with contextlib.suppress(OSError):
            Channel(sock).send(
                {"op": "error", "message": "this agent service is another user's", "exit_code": 2}
            )
        sock.close()
        return
    service.serve(Connection(service, sock, pid))


def _hold_lock() -> IO[str] | None:
    """The service's lock (flock: released by the kernel when the process dies, whatever its
    pid becomes); None when another service holds it."""
    handle = open(lock_path(), "a+")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _listen(path: Path) -> tuple[socket.socket, int]:
    """A socket only this user can connect to; its inode (to remove it only if still ours)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # we hold the lock: a socket here is a dead service's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(umask)
    os.chmod(path, 0o600)
    listener.listen(16)
    listener.settimeout(ACCEPT_POLL_S)
    return listener, os.stat(path).st_ino


def _remove_if_ours(path: Path, inode: int) -> None:
    """Unlink the socket only if it is the one this process made (a successor's stays)."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            path.unlink()


def _import_the_model_stack() -> None:
    """Import what the first session needs (torch, Qwen-Agent, the MCP SDK: ~2 s) while the
    first client says hello and sends its request."""
    import agent.backends.local  # noqa: F401
    import agent.service.pool  # noqa: F401
    import agent.session  # noqa: F401
    import agent.tools.code_interpreter  # noqa: F401
    import agent.tools.toolset  # noqa: F401


def serve() -> int:
    """Run the service until it is idle long enough or asked to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    settings = load_settings()
    private_dir(lock_path().parent)
    lock = _hold_lock()
    if lock is None:
        log.info("another agent service is running for %s; this one exits", agent_home())
        return 0
    path = socket_path()
    private_dir(path.parent)
    listener, inode = _listen(path)
    service = Service(settings.service_idle, settings.service_memory_mb << 20)
    threading.Thread(target=_import_the_model_stack, daemon=True).start()
    log.info(
        "agent service %s (build %s) pid %d listening on %s; exits after %g s idle",
        __version__,
        build_id(),
        os.getpid(),
        path,
        settings.service_idle,
    )
    try:
        while not service.stopping.is_set():
            idle_in = service.idle_exit_in()
            if idle_in is not None and idle_in <= 0:
                log.info("idle for %g s: exiting", service.idle_s)
                break
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            sock.settimeout(None)
            threading.Thread(target=_accept, args=(service, sock), daemon=True).start()
    finally:
        _remove_if_ours(path, inode)
        listener.close()
        service.end_connections(wait_s=10.0)
        service.stop_tools()
        log.info("agent service stopped")
        lock.close()
    return 0


def main() -> None:
    """`python -m agent.service`: what the client starts (in a session of its own, so the
    terminal's Ctrl-C reaches the client only)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    raise SystemExit(serve())
