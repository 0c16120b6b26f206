"""The resident service's MCP servers: one running server per distinct config, shared by runs.

A server is known by its name, command, arguments, the environment it gets (the requesting
client's, see `server_environment`), URL and timeouts: two clients with the same config share
it, a client with another `PATH` or proxy gets its own. A server found dead is started again;
one that fails to start is not kept (the next run tries again). Runs never stop pooled
servers; the service stops them all when it exits.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import Settings
from agent.tools.mcp_tools import (
    MCPConnections,
    MCPServerSpec,
    MCPTool,
    load_mcp_config,
    server_environment,
)

log = logging.getLogger("agent")


@dataclass
class PooledTools:
    """A toolset's share of the pool: its tools and the servers that failed (closing it leaves
    the servers running)."""

    tools: list[MCPTool] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        """Nothing to stop: the pool owns the servers."""


class MCPPool:
    """Running MCP servers, started on first use and kept until `close`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._servers: dict[str, tuple[MCPServerSpec, MCPConnections]] = {}
        self._lock = threading.Lock()

    def __call__(
        self,
        settings: Settings,
        only: set[str] | None,
        environ: Mapping[str, str] | None,
        log_dir: Path,
    ) -> PooledTools:
        """The tools of `settings.mcp_config`'s servers (those in `only`), from running servers
        where there are, starting the others in parallel."""
        specs = [s for s in load_mcp_config(settings.mcp_config) if only is None or s.name in only]
        keys = [_key(spec, settings, environ) for spec in specs]
        with self._lock:
            for key in keys:
                if key in self._servers and not self._servers[key][1].alive:
                    log.warning("MCP server %s had stopped; starting it again", key[:80])
                    self._servers.pop(key)[1].close()
            missing = [(k, s) for k, s in zip(keys, specs, strict=True) if k not in self._servers]
            with ThreadPoolExecutor(max_workers=max(len(missing), 1)) as starters:
                started = list(
                    starters.map(lambda item: self._start(item[1], settings, environ), missing)
                )
            result = PooledTools()
            for (key, spec), connections in zip(missing, started, strict=True):
                if connections.failures:
                    result.failures.update(connections.failures)
                    connections.close()
                else:
                    self._servers[key] = (spec, connections)
            for key in keys:
                if key in self._servers:
                    result.tools.extend(self._servers[key][1].tools)
        return result

    def _start(
        self, spec: MCPServerSpec, settings: Settings, environ: Mapping[str, str] | None
    ) -> MCPConnections:
        connections = MCPConnections(
            [spec],
            start_timeout=settings.mcp_start_timeout,
            call_timeout=settings.tool_timeout,
            log_dir=self.log_dir,
            environ=environ,
        )
        return connections.start()

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
        """Stop every server."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for _, connections in servers:
            connections.close()


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
