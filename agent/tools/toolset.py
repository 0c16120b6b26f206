"""The tools a run gets (MCP servers, code interpreter, plugins), where each came from, which
are selected, and their cleanup."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from qwen_agent.tools.base import BaseTool

from agent.config import Settings
from agent.errors import MCPReferenceError, PluginError, UnknownToolError
from agent.paths import new_run_dir

if TYPE_CHECKING:
    from agent.tools.code_interpreter import KernelSpares
    from agent.tools.mcp_context import ResourceContent
    from agent.tools.mcp_requests import ServerRequests
    from agent.tools.mcp_tools import PromptInfo, ResourceInfo

log = logging.getLogger("agent")


@dataclass(frozen=True)
class ToolEntry:
    """One tool, its source (`builtin`, `mcp:time`, a file, `package:NAME`) and the group that
    selects it with its siblings (MCP server, plugin file stem or entry point name)."""

    tool: BaseTool
    source: str
    group: str = ""

    @property
    def summary(self) -> str:
        """The first line of the tool's description."""
        return (
            (self.tool.description or "").strip().splitlines()[0] if self.tool.description else ""
        )


@dataclass
class Toolset:
    """Open tools; `close()` stops every server and kernel they started. `mcp` is where the
    MCP servers' prompts and resources are asked for, and their requests answered (None with
    no tools at all)."""

    entries: list[ToolEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    mcp: MCPServers | None = None
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

    def servers(self) -> MCPServers:
        """The MCP servers; `MCPReferenceError` when this toolset has none."""
        if self.mcp is None:
            raise MCPReferenceError("this run has no MCP servers (--no-tools)")
        return self.mcp

    def answering(self, answerer: ServerRequests) -> contextlib.AbstractContextManager[None]:
        """The MCP servers' requests go to `answerer` while the block runs."""
        return self.mcp.answering(answerer) if self.mcp is not None else contextlib.nullcontext()

    def interrupt(self) -> None:
        """Interrupt what the tools run now (the code interpreter's code)."""
        for entry in self.entries:
            stop = getattr(entry.tool, "interrupt", None)
            if callable(stop):
                stop()

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


class MCPServers(Protocol):
    """A toolset's MCP servers beyond their tools: started for it (`MCPConnections`) or the
    resident service's pool (`PooledTools`)."""

    def list_prompts(self) -> list[PromptInfo]: ...

    def list_resources(self) -> list[ResourceInfo]: ...

    def get_prompt(
        self, server: str, name: str, arguments: dict[str, str]
    ) -> list[dict[str, str]]: ...

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]: ...

    def answering(self, answerer: ServerRequests) -> contextlib.AbstractContextManager[None]: ...


class MCPSource(Protocol):
    """Where a toolset's MCP tools come from: servers started for it (`start_mcp_servers`), or
    the resident service's pool of running ones."""

    def __call__(
        self,
        settings: Settings,
        only: set[str] | None,
        environ: Mapping[str, str] | None,
        log_dir: Path,
    ) -> Any: ...


def start_mcp_servers(
    settings: Settings, only: set[str] | None, environ: Mapping[str, str] | None, log_dir: Path
) -> Any:
    """The MCP servers of `settings.mcp_config` (those in `only`, if given), started now for
    one toolset and stopped with it."""
    from agent.tools.mcp_tools import open_mcp_tools

    return open_mcp_tools(
        settings.mcp_config,
        strict=settings.strict_mcp,
        log_dir=log_dir,
        start_timeout=settings.mcp_start_timeout,
        call_timeout=settings.tool_timeout,
        only=only,
        environ=environ,
    )


def open_toolset(
    settings: Settings,
    work_dir: Path,
    log_dir: Path,
    environ: Mapping[str, str] | None = None,
    mcp: MCPSource | None = None,
    kernels: KernelSpares | None = None,
) -> Toolset:
    """The selected tools for one run: plugins, the code interpreter, the MCP servers needed
    (started with `environ`, else this process's environment; from `mcp`, else started now;
    the kernel from `kernels`' spares where there is one).

    Plugin problems are one-line `problems` (`PluginError` with `strict_tools`); a selection
    naming no tool is a `UnknownToolError`; no selection means every tool.
    """
    from agent.tools.code_interpreter import CodeInterpreter, kernel_options
    from agent.tools.plugin_tools import load_plugin_tools

    toolset = Toolset()
    if settings.tools == ():
        return toolset
    plugins = load_plugin_tools(settings.tool_files)
    try:
        interpreter = CodeInterpreter(
            work_dir=work_dir,
            timeout_s=settings.code_timeout,
            output_limit=settings.code_output_limit,
            image_limit=settings.code_image_limit,
            options=kernel_options(settings),
            log_dir=log_dir,
            spares=kernels,
        )
        toolset._closers.append(interpreter.close)
        only = None if settings.tools is None else _server_names(settings.tools)
        connections = (mcp or start_mcp_servers)(settings, only, environ, log_dir)
        toolset._closers.append(connections.close)
        toolset.mcp = connections
        found = [
            *(ToolEntry(tool, f"mcp:{tool.server}", tool.server) for tool in connections.tools),
            ToolEntry(interpreter, "builtin"),
            *plugins.entries,
        ]
        toolset.entries = _unique(found, plugins.problems)
        if settings.strict_tools and plugins.problems:
            raise PluginError(f"{plugins.problems[0]} (--strict-tools)")
        if settings.tools is not None:
            unavailable = plugins.failed | set(connections.failures)
            toolset.entries = select(toolset.entries, settings.tools, unavailable)
    except BaseException:
        toolset.close()
        raise
    for name, reason in connections.failures.items():
        toolset.problems.append(f"MCP server {name!r} is unavailable: {reason}")
    toolset.problems.extend(plugins.problems)
    return toolset


def open_tools(
    settings: Settings,
    run_dir: Path,
    environ: Mapping[str, str] | None = None,
    mcp: MCPSource | None = None,
    kernels: KernelSpares | None = None,
) -> Toolset:
    """The run's toolset; each tool that did not load is one warning line."""
    toolset = open_toolset(
        settings, run_dir / "work", run_dir / "logs", environ=environ, mcp=mcp, kernels=kernels
    )
    for problem in toolset.problems:
        log.warning("warning: %s", problem)
    return toolset


@contextlib.contextmanager
def open_tools_while(
    load: Callable[[], Any],
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    mcp: MCPSource | None = None,
    kernels: KernelSpares | None = None,
) -> Iterator[tuple[Any, Toolset]]:
    """Start the tools in the background while `load` runs (the model load); close them after."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(open_tools, settings, new_run_dir(), environ, mcp, kernels)
        try:
            loaded = load()
        except BaseException:
            if opening.exception() is None:
                opening.result().close()
            raise
        toolset = opening.result()  # raises what went wrong starting the tools
    with toolset:
        yield loaded, toolset


def _server_names(selection: tuple[str, ...]) -> set[str]:
    """Every MCP server a selection may name: `time`, or `fetch` in `fetch-fetch`."""
    names: set[str] = set()
    for item in selection:
        parts = item.split("-")
        names.update("-".join(parts[:end]) for end in range(1, len(parts) + 1))
    return names


def _unique(entries: list[ToolEntry], problems: list[str]) -> list[ToolEntry]:
    """The first tool of each name; each later one is reported in `problems`."""
    kept: dict[str, ToolEntry] = {}
    for entry in entries:
        first = kept.setdefault(entry.tool.name, entry)
        if first is not entry:
            problems.append(
                f"{entry.source}: tool {entry.tool.name!r} is already defined by {first.source}; "
                "rename one (@tool(name=...) or @register_tool(...)); this one is left out"
            )
    return list(kept.values())


def select(
    entries: list[ToolEntry], selection: tuple[str, ...], unavailable: set[str]
) -> list[ToolEntry]:
    """The entries whose name or group is in `selection`.

    An item naming nothing is an `UnknownToolError`, unless it names (or is a tool of) a
    source in `unavailable`, which failed and was reported already.
    """
    wanted = set(selection)
    known = {entry.tool.name for entry in entries} | {e.group for e in entries if e.group}
    unknown = [
        item
        for item in selection
        if item not in known and not (_server_names((item,)) & unavailable)
    ]
    if unknown:
        names = ", ".join(entry.tool.name for entry in entries) or "none"
        groups = ", ".join(sorted({e.group for e in entries if e.group})) or "none"
        raise UnknownToolError(
            f"no tool named {', '.join(map(repr, unknown))}, nor a group of tools (--tools or "
            f"the 'tools' setting); tools: {names}; groups: {groups}"
        )
    return [entry for entry in entries if entry.tool.name in wanted or entry.group in wanted]
