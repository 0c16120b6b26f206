"""`mcp_config.json` read and checked: the servers as `MCPServerSpec`s, or one line that says
what to fix. It imports no MCP SDK, so the light client (a task file's inline servers) can
check a config without loading it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import MCPConfigError

ALLOWED_SERVER_KEYS = ("command", "args", "env", "url", "type")
# Config "type" -> transport; stdio is the default for a server with a "command".
TRANSPORT_TYPES = {
    "stdio": "stdio",
    "streamable-http": "streamable-http",
    "http": "streamable-http",
    "sse": "sse",
}
_EXAMPLE = '{"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time"]}}}'


@dataclass(frozen=True)
class MCPServerSpec:
    """One server from the config: a command to run (stdio) or a URL to connect to."""

    name: str
    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    type: str | None = None  # "stdio", "streamable-http" or "sse" once loaded


def load_mcp_config(path: Path) -> list[MCPServerSpec]:
    """Read the servers from an `mcp_config.json` (`{"mcpServers": {name: {...}}}`).

    Raises `MCPConfigError` with one line that names the file and says what to fix.
    """
    data = _read_json(path)
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise _config_error(path, f'expected {{"mcpServers": {{...}}}}, like {_EXAMPLE}')
    return parse_mcp_servers(f"MCP config {path}", servers)


def parse_mcp_servers(where: str, servers: dict[str, Any]) -> list[MCPServerSpec]:
    """The servers of an `mcpServers` object (`{name: {"command", "args", "env"}}`, or
    `{"url", "type"}`); `MCPConfigError` naming `where` and the server when one is wrong."""
    return [_parse_server(where, str(name), entry) for name, entry in servers.items()]


def _config_error(path: Path, problem: str) -> MCPConfigError:
    return MCPConfigError(f"MCP config {path}: {problem}")


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _config_error(path, f"file not found; create it, e.g. {_EXAMPLE}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _config_error(path, f"cannot be read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise _config_error(path, f"not valid JSON ({exc.msg} at {where}); fix it there") from None


def _parse_server(where: str, name: str, entry: Any) -> MCPServerSpec:
    def fail(problem: str) -> MCPConfigError:
        return MCPConfigError(f'{where}: server "{name}" {problem}')

    if not isinstance(entry, dict):
        raise fail('must be an object like {"command": "uvx", "args": ["mcp-server-time"]}')
    unknown = sorted(set(entry) - set(ALLOWED_SERVER_KEYS))
    if unknown:
        allowed = ", ".join(ALLOWED_SERVER_KEYS)
        raise fail(f"has unknown key(s) {', '.join(unknown)}; allowed keys: {allowed}")
    kind = entry.get("type")
    if kind is not None and (not isinstance(kind, str) or kind not in TRANSPORT_TYPES):
        raise fail(f'has "type": {json.dumps(kind)}; use one of {", ".join(TRANSPORT_TYPES)}')
    if "command" in entry and "url" in entry:
        raise fail('has both "command" and "url"; keep one')
    if "url" in entry:
        return _http_server(name, entry, kind, fail)
    return _stdio_server(name, entry, kind, fail)


def _stdio_server(
    name: str, entry: dict[str, Any], kind: str | None, fail: Callable[[str], MCPConfigError]
) -> MCPServerSpec:
    command = entry.get("command")
    if not isinstance(command, str) or not command.strip():
        raise fail('needs "command" (the program to run) or "url" (an HTTP server)')
    if kind is not None and TRANSPORT_TYPES[kind] != "stdio":
        raise fail(f'has "type": "{kind}", which needs a "url" instead of a "command"')
    args = entry.get("args", [])
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise fail('has "args" that is not a list of strings')
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(value, str) for value in env.values()):
        raise fail('has "env" that is not an object of string values')
    return MCPServerSpec(name=name, command=command, args=args, env=env, type="stdio")


def _http_server(
    name: str, entry: dict[str, Any], kind: str | None, fail: Callable[[str], MCPConfigError]
) -> MCPServerSpec:
    url = entry["url"]
    if "args" in entry or "env" in entry:
        raise fail('has "args" or "env", which only a server with a "command" uses')
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise fail('has a "url" that is not an http:// or https:// address')
    transport = TRANSPORT_TYPES.get(kind or "streamable-http")
    if transport == "stdio":
        raise fail('has "type": "stdio", which needs a "command" instead of a "url"')
    return MCPServerSpec(name=name, url=url, type=transport)
