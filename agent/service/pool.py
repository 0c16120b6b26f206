"""The resident service's MCP servers: one running server per distinct config, shared by runs.

A server is known by its name, command, arguments, the environment it gets (the requesting
client's, see `server_environment`), URL and timeouts: two clients with the same config share
it, a client with another `PATH` or proxy gets its own. A server found dead is started again;
one that fails to start is not kept (the next run tries again). Runs never stop pooled
servers; the service stops them all when it exits.

Each server's tool list is also kept on disk (`cache/mcp-tools/`). A server that is not
running but whose list is known is started in the background: the run's prompt is built from
the list at once, and a call to one of its tools waits for the server (a failed start is that
call's error result). So a cold service does not wait for `uvx` before the model's first token.
Prompts and resources are not kept on disk: they are asked of the running server when wanted.

The servers' requests (sampling, elicitation) reach the session whose turn is running: every
pooled server sends them to the pool's one `TurnRouter`, which a session's turn points at
itself (`PooledTools.answering`); the service runs one turn at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.errors import MCPServerError, ToolError
from agent.paths import cache_dir, write_atomically
from agent.tools.mcp_context import ResourceContent
from agent.tools.mcp_requests import ServerRequests, TurnRouter
from agent.tools.mcp_tools import (
    MCPConnections,
    MCPServerSpec,
    MCPTool,
    PromptInfo,
    ResourceInfo,
    load_mcp_config,
    server_environment,
    unknown_server,
)

log = logging.getLogger("agent")


@dataclass
class PooledTools:
    """A toolset's share of the pool: its tools, its servers (running, or starting) and
    those that failed (closing it leaves the servers running)."""

    router: TurnRouter
    tools: list[MCPTool] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    servers: dict[str, Future[MCPConnections]] = field(default_factory=dict)

    def close(self) -> None:
        """Nothing to stop: the pool owns the servers."""

    def answering(self, answerer: ServerRequests) -> contextlib.AbstractContextManager[None]:
        """The pooled servers' requests go to `answerer` while the block runs (a turn)."""
        return self.router.serving(answerer)

    def list_prompts(self) -> list[PromptInfo]:
        return [p for name in self.servers for p in self._connections(name).list_prompts()]

    def list_resources(self) -> list[ResourceInfo]:
        return [r for name in self.servers for r in self._connections(name).list_resources()]

    def get_prompt(self, server: str, name: str, arguments: dict[str, str]) -> list[dict[str, str]]:
        return self._connections(server).get_prompt(server, name, arguments)

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]:
        return self._connections(server).read_resource(server, uri)

    def _connections(self, server: str) -> MCPConnections:
        """The server's connections, once it has started (waited for)."""
        starting = self.servers.get(server)
        if starting is None:
            raise unknown_server(server, self.servers)
        connections = starting.result()
        if connections.failures:
            reason = "; ".join(connections.failures.values())
            raise MCPServerError(f"the MCP server did not start: {reason}")
        return connections


class MCPPool:
    """Running MCP servers, started on first use and kept until `close`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._servers: dict[str, tuple[MCPServerSpec, MCPConnections]] = {}
        self._starting: dict[str, Future[MCPConnections]] = {}
        self._starter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mcp-start")
        self._lock = threading.Lock()
        self.router = TurnRouter()

    def __call__(
        self,
        settings: Settings,
        only: set[str] | None,
        environ: Mapping[str, str] | None,
        log_dir: Path,
    ) -> PooledTools:
        """The tools of `settings.mcp_config`'s servers (those in `only`): running servers',
        known lists' (their servers starting in the background), and the rest started now in
        parallel."""
        specs = [s for s in load_mcp_config(settings.mcp_config) if only is None or s.name in only]
        keys = [_key(spec, settings, environ) for spec in specs]
        result = PooledTools(self.router)
        with self._lock:
            for key in keys:
                if key in self._servers and not self._servers[key][1].alive:
                    log.warning("MCP server %s had stopped; starting it again", key[:80])
                    self._servers.pop(key)[1].close()
            waiting: list[Future[MCPConnections]] = []
            for key, spec in zip(keys, specs, strict=True):
                if key in self._servers:
                    continue
                if key not in self._starting:
                    self._starting[key] = self._starter.submit(
                        self._start, key, spec, settings, environ
                    )
                if _known_tools(key) is None:
                    waiting.append(self._starting[key])
        for pending in waiting:  # no list known: this run waits for the server
            connections = pending.result()
            if connections.failures:
                result.failures.update(connections.failures)
        for key in keys:
            with self._lock:
                running = self._servers.get(key)
                later = self._starting.get(key)
            if running is not None:
                result.tools.extend(running[1].tools)
                result.servers[running[0].name] = _done(running[1])
            elif later is not None and (known := _known_tools(key)) is not None:
                result.tools.extend(self._deferred(known, later))
                result.servers[specs[keys.index(key)].name] = later
        return result

    def _deferred(
        self, known: list[dict[str, Any]], starting: Future[MCPConnections]
    ) -> list[MCPTool]:
        """Tools from a known list whose calls wait for the server to have started."""

        def invoker(name: str) -> Any:
            def invoke(arguments: dict[str, Any]) -> str:
                connections = starting.result()
                if connections.failures:
                    reason = "; ".join(connections.failures.values())
                    raise ToolError(f"{name}: the MCP server did not start: {reason}")
                for tool in connections.tools:
                    if tool.name == name:
                        return tool.call(arguments)
                raise ToolError(f"{name}: the MCP server no longer offers this tool")

            return invoke

        return [
            MCPTool(t["name"], t["description"], t["parameters"], invoker(t["name"]), t["server"])
            for t in known
        ]

    def _start(
        self,
        key: str,
        spec: MCPServerSpec,
        settings: Settings,
        environ: Mapping[str, str] | None,
    ) -> MCPConnections:
        """Start one server; kept (and its tool list written) if it started."""
        connections = MCPConnections(
            [spec],
            start_timeout=settings.mcp_start_timeout,
            call_timeout=settings.tool_timeout,
            log_dir=self.log_dir,
            environ=environ,
            router=self.router,
        )
        try:
            connections.start()
        except Exception as exc:  # start() reports failures; anything else is one too
            connections.failures[spec.name] = f"{spec.name}: {type(exc).__name__}: {exc}"
        with self._lock:
            self._starting.pop(key, None)
            if connections.failures:
                log.warning("MCP server %s", "; ".join(connections.failures.values()))
                connections.close()
            else:
                self._servers[key] = (spec, connections)
        if not connections.failures:
            _remember_tools(key, connections.tools)
        return connections

    def states(self) -> list[dict[str, Any]]:
        """Each server: its name, command and whether it runs."""
        with self._lock:
            servers = list(self._servers.values())
        return [
            {
                "name": spec.name,
                "command": " ".join([spec.command or "", *spec.args]).strip() or spec.url,
                "state": "running" if connections.alive else "stopped",
                "tools": len(connections.tools),
            }
            for spec, connections in servers
        ]

    def close(self) -> None:
        """Stop every server (those still starting once they have)."""
        self._starter.shutdown(wait=True)
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for _, connections in servers:
            connections.close()


def _done(connections: MCPConnections) -> Future[MCPConnections]:
    future: Future[MCPConnections] = Future()
    future.set_result(connections)
    return future


def _key(spec: MCPServerSpec, settings: Settings, environ: Mapping[str, str] | None) -> str:
    """What makes two requests share a server."""
    env = server_environment(spec.env, environ) if spec.command else {}
    return json.dumps(
        [
            spec.name,
            spec.command,
            list(spec.args),
            env,
            spec.url,
            spec.type,
            settings.tool_timeout,
        ],
        sort_keys=True,
    )


def _tools_file(key: str) -> Path:
    return cache_dir() / "mcp-tools" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _known_tools(key: str) -> list[dict[str, Any]] | None:
    """The tool list a server of this config offered last time; None if never seen."""
    try:
        known = json.loads(_tools_file(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return known if isinstance(known, list) else None


def _remember_tools(key: str, tools: list[MCPTool]) -> None:
    fields = ("name", "description", "parameters", "server")
    listed = [{name: getattr(tool, name) for name in fields} for tool in tools]
    path = _tools_file(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(listed, ensure_ascii=False))
