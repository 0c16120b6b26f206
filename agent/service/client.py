"""The light client: how `agent run`, `agent chat` and jobs use the resident service.

It imports none of the model stack (torch, transformers, Qwen-Agent, the MCP SDK, Jupyter):
it resolves the settings, sends them with the messages, the working directory and the
environment, and shows the events that come back, exactly as an in-process run shows them.
It starts the service when none runs (one, even when two clients start it at once: a lock
file held with `flock`), retires a service of another build when it is idle, and falls back
to running in this process, saying so, when the service cannot be used (unless
`service = required`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.errors import ServiceError
from agent.events import Error, RunFinished, RunStarted, event_from_dict
from agent.service.protocol import (
    PROTOCOL,
    Channel,
    ProtocolError,
    build_id,
    lock_path,
    log_path,
    private_dir,
    settings_to_wire,
    socket_path,
    start_lock_path,
)
from agent.session import Ask, Session, Show, TurnResult, open_local_session
from agent.tools.mcp_context import ResourceContent
from agent.tools.mcp_requests import ElicitationRequest, Questions, RequestRefused

log = logging.getLogger("agent")

HELLO_TIMEOUT_S = 5.0  # a service that has not answered by then is taken as stuck
START_TIMEOUT_S = 30.0  # a new service is listening by then (it loads the model later)
STOP_TIMEOUT_S = 15.0
LOG_KEPT_BYTES = 10 << 20  # a longer log is moved to service.log.1 when a service starts
POLL_S = 0.05


class ServiceUnavailable(Exception):
    """The service cannot be used now; the message says why, in one line."""


def dial() -> Channel | None:
    """A connection to the running service; None when none listens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(socket_path()))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    return Channel(sock)


def greet(channel: Channel, timeout: float = HELLO_TIMEOUT_S) -> dict[str, Any]:
    """The service's `hello`; ServiceUnavailable when it does not answer in time."""
    channel.sock.settimeout(timeout)
    try:
        channel.send({"op": "hello", "protocol": PROTOCOL, "build": build_id()})
        reply = channel.receive()
    except TimeoutError:
        channel.close()
        raise ServiceUnavailable(f"the agent service did not answer within {timeout:g} s") from None
    except (OSError, ProtocolError) as exc:
        channel.close()
        raise ServiceUnavailable(f"the agent service did not answer: {exc}") from None
    channel.sock.settimeout(None)
    if reply is None or reply.get("op") != "hello":
        channel.close()
        message = (reply or {}).get("message") or "it closed the connection"
        raise ServiceUnavailable(f"the agent service refused: {message}")
    return reply


def service_running() -> bool:
    """Whether a service holds the lock (alive, whether or not it answers)."""
    if not lock_path().exists():
        return False
    with open(lock_path(), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def wait_stopped(timeout: float = STOP_TIMEOUT_S) -> bool:
    """Wait until no service holds the lock; whether it is gone."""
    deadline = time.monotonic() + timeout
    while service_running():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def connect(start: bool = True, any_build: bool = False) -> tuple[Channel, dict[str, Any]]:
    """A greeted connection to a service of this build (of any, with `any_build`), starting
    one when `start`; ServiceUnavailable (one line) when there can be none."""
    channel = dial()
    if channel is not None:
        hello = greet(channel)
        same = hello.get("build") == build_id() and hello.get("protocol") == PROTOCOL
        if same or any_build:
            return channel, hello
        _retire(channel, hello)
    if not start:
        raise ServiceUnavailable("the agent service is not running")
    return _start()


def _retire(channel: Channel, hello: dict[str, Any]) -> None:
    """Stop a service of another build, if it is idle (after an upgrade)."""
    version = hello.get("version", "?")
    try:
        channel.send({"op": "stop", "when": "idle"})
        reply = channel.receive() or {}
    except (OSError, ProtocolError):
        reply = {}
    finally:
        channel.close()
    if reply.get("op") == "busy":
        raise ServiceUnavailable(
            f"the agent service running is another build (version {version}) and has a run "
            "going; it is replaced once idle"
        )
    log.info("note: replaced the agent service of another build (version %s)", version)
    if not wait_stopped():
        raise ServiceUnavailable("the agent service of another build did not stop")


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    """Held while starting: a second client waits, then finds the service the first started."""
    private_dir(start_lock_path().parent)
    with open(start_lock_path(), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _start() -> tuple[Channel, dict[str, Any]]:
    with _start_lock():
        channel = dial()
        if channel is not None:
            return channel, greet(channel)
        # Alive but not listening: stuck, or just stopping.
        if service_running() and not wait_stopped(timeout=HELLO_TIMEOUT_S):
            raise ServiceUnavailable("the agent service runs but does not listen")
        process = _spawn()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            channel = dial()
            if channel is not None:
                return channel, greet(channel)
            if process.poll() is not None:
                raise ServiceUnavailable(f"the agent service did not start: {_last_log_line()}")
            time.sleep(POLL_S)
    raise ServiceUnavailable(f"the agent service did not start within {START_TIMEOUT_S:g} s")


def _spawn() -> subprocess.Popen[bytes]:
    """Start `python -m agent.service` in a session of its own, its output to its log."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and path.stat().st_size > LOG_KEPT_BYTES:
        path.replace(path.with_name(path.name + ".1"))  # one older log is kept
    with open(path, "ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "agent.service"],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(path.parent),
        )
    # Reaped when it exits, should this client outlive it (the scheduler, a long chat).
    threading.Thread(target=process.wait, daemon=True).start()
    return process


def _last_log_line() -> str:
    try:
        lines = log_path().read_text(errors="replace").strip().splitlines()
    except OSError:
        lines = []
    return (lines[-1] if lines else "it exited") + f" (log: {log_path()})"


def request(message: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the running service, whatever its build, and return its reply
    (`status`, `stop`)."""
    channel, _ = connect(start=False, any_build=True)
    try:
        channel.send(message)
        reply = channel.receive()
    finally:
        channel.close()
    if reply is None:
        raise ServiceUnavailable("the agent service closed the connection")
    return reply


class ServiceSession:
    """A session in the resident service, over one connection (see `agent.session.Session`)."""

    def __init__(
        self, channel: Channel, ask: Ask | None, questions: Questions | None = None
    ) -> None:
        self.channel = channel
        self.ask = ask
        self.questions = questions
        self.tool_names: list[str] = []
        self._sending = threading.Lock()

    def open(self, settings: Settings) -> None:
        """Open the session: the service loads the model and starts the tools if it must."""
        self._send(
            {
                "op": "open",
                "settings": settings_to_wire(settings),
                "cwd": os.getcwd(),
                "env": dict(os.environ),
                "ask": self.ask is not None,
                "questions": self.questions is not None,
            }
        )
        while True:
            reply = self._receive()
            if reply["op"] == "opened":
                self.tool_names = [str(name) for name in reply.get("tools", [])]
                for problem in reply.get("problems", []):
                    log.warning("warning: %s", problem)
                return
            if reply["op"] == "event":  # waiting for another client's run
                log.info("%s", reply["event"].get("message", ""))

    def turn(
        self,
        messages: list[dict[str, Any]],
        show: Show,
        time_limit_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> TurnResult:
        """Run a turn in the service, showing its events here; Ctrl-C (or `stop`, set from
        another thread) cancels it there."""
        self._send({"op": "turn", "messages": messages, "time_limit_s": time_limit_s})
        if stop is None:
            return self._turn_replies(show)
        done = threading.Event()
        watcher = threading.Thread(target=self._cancel_on, args=(stop, done), daemon=True)
        watcher.start()
        try:
            return self._turn_replies(show)
        finally:
            done.set()
            watcher.join()

    def _cancel_on(self, stop: threading.Event, done: threading.Event) -> None:
        """Send `cancel` once `stop` is set, unless the turn is `done` first."""
        while not done.wait(POLL_S):
            if stop.is_set():
                with contextlib.suppress(ServiceError):
                    self._send({"op": "cancel"})
                return

    def _turn_replies(self, show: Show) -> TurnResult:
        """The service's replies to a turn, until it is done."""
        started = False
        while True:
            try:
                reply = self._receive_during_turn()
                if reply is None:
                    return self._died(show, started)
                if reply["op"] == "event":
                    event = event_from_dict(reply["event"])
                    started = started or isinstance(event, RunStarted)
                    show(event)
                elif reply["op"] == "ask":
                    self._send({"op": "answer", **self._answer(reply)})
                elif reply["op"] == "elicit":
                    self._send({"op": "elicited", **self._elicited(reply)})
                elif reply["op"] == "done":
                    return TurnResult(reply["status"], reply["sent"], reply["added"])
            except KeyboardInterrupt:
                self._send({"op": "cancel"})

    def get_prompt(self, server: str, name: str, arguments: dict[str, str]) -> list[dict[str, str]]:
        """The MCP prompt, rendered by the service's server."""
        self._send({"op": "prompt", "server": server, "name": name, "arguments": arguments})
        reply = self._reply("prompt")
        return [
            {"role": str(m.get("role")), "content": str(m.get("content"))}
            for m in reply.get("messages", [])
        ]

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]:
        """The MCP resource, read by the service's server."""
        self._send({"op": "resource", "server": server, "uri": uri})
        reply = self._reply("resource")
        return [ResourceContent.from_dict(item) for item in reply.get("contents", [])]

    def close(self) -> None:
        """End the session: the service closes its tools and kills its kernel."""
        self.channel.close()

    def _reply(self, op: str) -> dict[str, Any]:
        """The service's reply `op` to a request (its `error` raised as ServiceError)."""
        while True:
            reply = self._receive()
            if reply["op"] == op:
                return reply

    def _answer(self, asked: dict[str, Any]) -> dict[str, Any]:
        """The user's y/n/a to a tool call, or (`about`: sampling) to a server's request, or
        why nobody answers."""
        if asked.get("about") == "sampling":
            approve = self.questions.approve if self.questions else None
        else:
            approve = self.ask
        try:
            return {"answer": approve(asked["name"], asked["arguments"]) if approve else "n"}
        except RequestRefused as exc:
            return {"answer": "n", "refused": str(exc)}

    def _elicited(self, asked: dict[str, Any]) -> dict[str, Any]:
        """The user's answer to a server's form, or why nobody answers."""
        if self.questions is None:
            return {"refused": "nobody can answer the form"}
        try:
            answer = self.questions.elicit(ElicitationRequest.from_dict(asked))
        except RequestRefused as exc:
            return {"refused": str(exc)}
        return {"action": answer.action, "content": answer.content}

    def _died(self, show: Show, started: bool) -> TurnResult:
        """The service went away mid-turn: said in one line, the run recorded as interrupted."""
        message = f"the agent service stopped during the run (log: {log_path()})"
        if not started:
            raise ServiceError(message)
        show(Error(message=message, where="agent"))
        show(RunFinished(status="interrupted", usage={}, timings={}))
        return TurnResult("interrupted")

    def _send(self, message: dict[str, Any]) -> None:
        try:
            with self._sending:  # a `cancel` from the stop watcher, beside an answer
                self.channel.send(message)
        except OSError:
            raise ServiceError(f"the agent service has stopped (log: {log_path()})") from None

    def _receive(self) -> dict[str, Any]:
        reply = self._receive_during_turn()
        if reply is None:
            raise ServiceError(f"the agent service has stopped (log: {log_path()})")
        return reply

    def _receive_during_turn(self) -> dict[str, Any] | None:
        try:
            reply = self.channel.receive()
        except (OSError, ProtocolError):
            return None
        if reply is not None and reply["op"] == "error":
            raise ServiceError(str(reply.get("message")), int(reply.get("exit_code", 1)))
        return reply


@contextlib.contextmanager
def open_session(
    settings: Settings, ask: Ask | None = None, questions: Questions | None = None
) -> Iterator[Session]:
    """The session for one command: the resident service's when it is on and answers, else
    one in this process. `ask` is asked before the tool calls the approval policy names
    (None: no approvals, as for `agent run` and jobs); `questions` answers what MCP servers
    ask (None: nobody, as for jobs)."""
    remote = None
    if settings.service == "required" or (settings.service == "auto" and not _download(settings)):
        remote = connect_session(settings, ask, questions)
    if remote is not None:
        with contextlib.closing(remote):
            yield remote
        return
    with open_local_session(settings, ask, questions=questions) as session:
        yield session


def _download(settings: Settings) -> bool:
    """Whether the model must first come from the hub: the download's progress is shown only
    by a command that loads the model itself, so that run is in-process (the next use the
    service)."""
    if settings.model_server or Path(settings.model).expanduser().is_dir():
        return False
    from huggingface_hub.constants import HF_HUB_CACHE

    snapshots = Path(HF_HUB_CACHE) / f"models--{settings.model.replace('/', '--')}" / "snapshots"
    if any(snapshots.glob("*/config.json")):
        return False
    log.info("note: %s is downloaded first; this run is in this process", settings.model)
    return True


def connect_session(
    settings: Settings, ask: Ask | None, questions: Questions | None = None
) -> ServiceSession | None:
    """A session in the resident service; None (and a note why) when this command should run
    in-process instead. With `service = required`, ServiceError instead of None."""
    try:
        channel, _ = connect(start=True)
    except (ServiceUnavailable, OSError) as exc:
        if settings.service == "required":
            raise ServiceError(f"{exc} (service = required)") from None
        log.warning("note: %s; running in this process", exc)
        return None
    session = ServiceSession(channel, ask, questions)
    try:
        session.open(settings)
    except BaseException:
        session.close()
        raise
    return session


def describe(status: dict[str, Any]) -> str:
    """`agent service status` for people."""
    idle = status.get("idle_exit_in_s")
    lines = [
        f"agent service {status.get('version')} (build {status.get('build')}), pid "
        f"{status.get('pid')}, up {status.get('uptime_s')} s, socket {status.get('socket')}",
        "exits in "
        + (f"{idle:g} s if still idle" if idle is not None else "— (a session is open)"),
    ]
    for model in status.get("models", []):
        lines.append(
            f"model {model['model']} ({model['engine']} on {model['device']}), "
            f"{model['memory_mb']} MB"
        )
    for server in status.get("mcp_servers", []):
        lines.append(
            f"MCP server {server['name']}: {server['state']}, {server['tools']} tools "
            f"({server['command']})"
        )
    if status.get("spare_kernels"):
        lines.append(f"spare code interpreter kernels: {status['spare_kernels']}")
    for run in status.get("runs", []):
        lines.append(
            f"run for pid {run['client_pid']}, {run['running_s']} s: {run['prompt'][:60]!r}"
        )
    return "\n".join(lines)
