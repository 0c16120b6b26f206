"""The tools a run gets (MCP servers, code interpreter), where each came from, and their cleanup."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qwen_agent.tools.base import BaseTool

from agent.config import Settings
from agent.errors import UnknownToolError

log = logging.getLogger("agent")


@dataclass(frozen=True)
class ToolEntry:
    """One tool and its source (`builtin`, `mcp:time`, ...)."""

    tool: BaseTool
    source: str

    @property
    def summary(self) -> str:
        """The first line of the tool's description."""
        return (
            (self.tool.description or "").strip().splitlines()[0] if self.tool.description else ""
        )


@dataclass
class Toolset:
    """Open tools; `close()` stops every server and kernel they started."""

    entries: list[ToolEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def tools(self) -> list[BaseTool]:
        return [entry.tool for entry in self.entries]

    def get(self, name: str) -> BaseTool:
        """The tool called `name`, or an error listing the names there are."""
        for entry in self.entries:
            if entry.tool.name == name:
                return entry.tool
        names = ", ".join(entry.tool.name for entry in self.entries) or "none"
        raise UnknownToolError(f"no tool named {name!r}; available: {names}")

    def close(self) -> None:
        """Release everything; safe to call twice."""
        closers, self._closers = self._closers, []
        for close in reversed(closers):
            try:
                close()
            except Exception as exc:  # cleanup must go on for the others
                log.warning("cleanup failed: %s", exc)

    def __enter__(self) -> Toolset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_toolset(settings: Settings, work_dir: Path, log_dir: Path) -> Toolset:
    """Start the MCP servers and set up the code interpreter for one run."""
    from agent.code_interpreter import CodeInterpreter
    from agent.mcp_tools import open_mcp_tools

    toolset = Toolset()
    try:
        interpreter = CodeInterpreter(
            work_dir=work_dir,
            timeout_s=settings.code_timeout,
            output_limit=settings.code_output_limit,
        )
        toolset._closers.append(interpreter.close)
        connections = open_mcp_tools(
            settings.mcp_config,
            strict=settings.strict_mcp,
            log_dir=log_dir,
            start_timeout=settings.mcp_start_timeout,
            call_timeout=settings.tool_timeout,
        )
        toolset._closers.append(connections.close)
    except BaseException:
        toolset.close()
        raise
    for name, reason in connections.failures.items():
        toolset.problems.append(f"MCP server {name!r} is unavailable: {reason}")
    for tool in connections.tools:
        toolset.entries.append(ToolEntry(tool=tool, source=f"mcp:{tool.server}"))
    toolset.entries.append(ToolEntry(tool=interpreter, source="builtin"))
    return toolset
