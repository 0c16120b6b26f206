"""What the light client and the resident service say to each other, and where they meet.

One JSON object per line on a Unix socket, each with an `op`:

client → service: `hello` (protocol, build), `open` (the resolved settings, working directory,
environment, whether tool calls may be asked about, whether the MCP servers' `questions` may
be), `turn` (messages, time limit), `answer` (to an `ask`), `elicited` (to an `elicit`: action
and content, or `refused` with why nobody answers), `prompt` (server, name, arguments: an MCP
prompt to render), `resource` (server, uri: an MCP resource to read), `cancel`, `status`,
`stop` (`idle`: only when no run is going).
service → client: `hello` (protocol, build, version, pid), `opened` (tool names, and the
one-line problems of tools that did not load), `event` (one run event, as `--json` prints it),
`ask` (a tool call to approve; `about: "sampling"` for an MCP server's sampling request),
`elicit` (an MCP server's form: server, message, schema or url), `prompt` (its messages),
`resource` (its contents: text, or the size of binary data), `done` (status, the messages sent
and added), `error` (message, exit code), `status`, `stopping`, `busy`.

The build id changes whenever the installed code does, so a client never talks to a service
left running by an older build. This module imports nothing heavy: the client is light.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from dataclasses import asdict, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import Settings, settings_from_values
from agent.paths import agent_home

PROTOCOL = 1
MAX_LINE = 64 * 1024 * 1024  # a message longer than this is refused, not buffered


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol."""


@cache
def build_id() -> str:
    """The installed code's identity: the version and every module's size and change time."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(package.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(package)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def runtime_dir() -> Path:
    """Where the socket and lock live: the user's runtime directory (`$XDG_RUNTIME_DIR`, on
    tmpfs, private), else `AGENT_HOME/run`; one service per `AGENT_HOME`."""
    home = str(agent_home())
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    if base and os.path.isdir(base) and os.stat(base).st_uid == os.getuid():
        key = hashlib.sha256(home.encode()).hexdigest()[:12]
        return Path(base) / f"agent-{key}"
    return Path(home) / "run"


def socket_path() -> Path:
    """The service's Unix socket (a short path: sockets allow ~107 bytes)."""
    path = runtime_dir() / "service.sock"
    if len(str(path)) < 100:
        return path
    key = hashlib.sha256(str(agent_home()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"agent-{os.getuid()}-{key}.sock"


def lock_path() -> Path:
    """Held (flock) by the running service for its whole life."""
    return runtime_dir() / "service.lock"


def start_lock_path() -> Path:
    """Held by a client while it starts the service, so two clients start one."""
    return runtime_dir() / "start.lock"


def log_path() -> Path:
    """The service's log."""
    return agent_home() / "logs" / "service.log"


def private_dir(path: Path) -> Path:
    """`path`, made if needed, readable by the user only."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def settings_to_wire(settings: Settings) -> dict[str, Any]:
    """The resolved settings as JSON values (paths made absolute: the service runs elsewhere;
    a table such as `hooks` as its JSON object)."""
    wire: dict[str, Any] = {}
    for item in fields(Settings):
        value = getattr(settings, item.name)
        paths = "Path" in str(item.type)
        if isinstance(value, tuple):
            value = [str(Path(v).absolute()) if paths else v for v in value]
        elif paths and value is not None:
            value = str(Path(value).absolute())
        elif is_dataclass(value) and not isinstance(value, type):
            value = asdict(value)
        wire[item.name] = value
    return wire


def settings_from_wire(wire: Any) -> Settings:
    """`Settings` back from `settings_to_wire`, checked as any settings are."""
    if not isinstance(wire, dict):
        raise ProtocolError("settings must be an object")
    return settings_from_values(wire)


class Channel:
    """One connection: messages out, and messages in as complete lines."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        """Send one message (OSError when the other side is gone)."""
        self.sock.sendall(json.dumps(message, ensure_ascii=False).encode() + b"\n")

    def receive(self) -> dict[str, Any] | None:
        """The next message; None when the other side closed the connection."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise ProtocolError("message too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ProtocolError(f"not JSON: {exc}") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise ProtocolError("a message must be an object with an 'op'")
        return message

    def close(self) -> None:
        self.sock.close()
