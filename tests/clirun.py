"""Run the real `agent` command line in a subprocess with its own AGENT_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def agent_argv(*args: str) -> list[str]:
    """The command line of `python -m agent ARGS` with this interpreter."""
    return [sys.executable, "-m", "agent", *args]


def agent_env(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with AGENT_HOME=home and `env` on top."""
    return {**os.environ, "AGENT_HOME": str(home), **(env or {})}


def agent_cli(
    *args: str,
    home: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m agent ARGS` with AGENT_HOME=home; output captured as text; `stdin` piped in
    (else standard input is empty, as in a script)."""
    return subprocess.run(
        agent_argv(*args),
        capture_output=True,
        text=True,
        env=agent_env(home, env),
        timeout=timeout,
        check=False,
        input=stdin if stdin is not None else "",
    )


def json_events(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line parsed as one JSON object (fails on anything else)."""
    return [json.loads(line) for line in stdout.splitlines()]


def empty_mcp_config(directory: Path) -> Path:
    """An `mcp_config.json` with no servers, for runs that need no MCP tools."""
    path = directory / "no-mcp.json"
    path.write_text('{"mcpServers": {}}')
    return path
