"""Every way to extend `agent`, in one module: read this one to write a plugin.

Tools. A tool is a Qwen-Agent `BaseTool`, written either way:
- a plain typed function marked `@tool`: its schema comes from its signature, type hints and
  docstring (Google `Args:` or reST `:param:`); it returns a str, or anything JSON can encode;
- a class registered with Qwen-Agent's own `@register_tool("name")` (the full contract:
  `description`, `parameters` with exactly type/properties/required, `call(params)`),
  constructible with no arguments.
Raise `ToolError` in either for an error result the model should read; any other exception
becomes an error result too, and the run goes on.

Where tools are found (`agent tools list` shows each one's source):
- `*.py` files (not starting with `_`) among the shipped tools, then in the user's tool
  directories (`$AGENT_TOOLS_PATH`, else `$AGENT_HOME/tools`, else `~/.config/agent/tools`),
  then files given with `--tool FILE` (`tool_files` in config.toml);
- installed packages, through an entry point in the group `ENTRY_POINT_GROUP` naming a
  module, one tool, or a list of them. `AGENT_LOAD_PLUGINS` (distribution names, comma
  separated; empty for none) limits which installed packages are loaded, tools and hooks alike.

`agent tools new NAME` writes a template to start from; `agent tools call NAME JSON` calls a
tool exactly as the model would.

Hooks (pluggy). A plugin is any object or module with functions marked `@hookimpl` named as
the specs in `Hooks`; register it through an entry point in the group `HOOKS_ENTRY_POINT_GROUP`
(`agent.plugins`). An implementation takes any of its spec's arguments, by name (pluggy). Four
points, for `agent run`, `agent chat` and scheduled jobs alike (in the resident service's
process when the run is there):
- `before_tool_call(name, arguments, run_id)`: before each tool call runs, with the arguments
  already checked against the tool's schema; return a reason to refuse the call (the model
  reads it as the call's error result), or None to let it run. The first reason wins; a hook
  that raises refuses the call. `agent chat --approve` is built on it (asked last).
- `after_tool_call(name, arguments, result, ok, duration_s, run_id)`: after each call that ran,
  with its result as the model reads it.
- `run_started(run_id, prompt, model, backend, tools)`: as a run starts, before the model is
  called (`run_id` is the id the run history keeps the run under).
- `run_finished(run_id, prompt, status, answer, usage, timings)`: as it ends (`status`:
  answered, no_answer, error, cancelled, timed_out).
The last three return None, or a line to show the user (a `notice` event: how a hook reports
trouble); one that raises is shown the same way, and the run goes on. The commands a user
lists under `[hooks]` in config.toml run through these same points (agent/loop/hook_commands.py),
with the same arguments as JSON on stdin.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pluggy

from agent.errors import ToolError

if TYPE_CHECKING:
    from qwen_agent.tools.base import BaseTool, register_tool

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOKS_ENTRY_POINT_GROUP",
    "LOAD_PLUGINS_VARIABLE",
    "BaseTool",
    "Hooks",
    "ToolError",
    "hookimpl",
    "register_tool",
    "tool",
]

ENTRY_POINT_GROUP = "agent.tools"
HOOKS_ENTRY_POINT_GROUP = "agent.plugins"
LOAD_PLUGINS_VARIABLE = "AGENT_LOAD_PLUGINS"  # as llm's LLM_LOAD_PLUGINS
hookspec = pluggy.HookspecMarker("agent")
hookimpl = pluggy.HookimplMarker("agent")
TOOL_MARK = "__agent_tool__"  # the attribute `@tool` sets: the tool's name
F = TypeVar("F", bound=Callable[..., Any])


@overload
def tool(func: F, *, name: str | None = None) -> F: ...
@overload
def tool(func: None = None, *, name: str | None = None) -> Callable[[F], F]: ...
def tool(func: F | None = None, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a typed function as a tool (`@tool` or `@tool(name="other_name")`).

    The function is returned unchanged (call it directly in your own tests); the loader turns
    it into a `BaseTool` whose schema comes from its signature and docstring.
    """

    def mark(function: F) -> F:
        setattr(function, TOOL_MARK, name or function.__name__)
        return function

    return mark(func) if func is not None else mark


class Hooks:
    """The hooks a plugin may implement (each may take only the arguments it needs)."""

    @hookspec(firstresult=True)
    def before_tool_call(self, name: str, arguments: dict[str, Any], run_id: str) -> str | None:
        """Before a tool call runs: a reason to refuse it, or None to let it run."""

    @hookspec
    def after_tool_call(
        self,
        name: str,
        arguments: dict[str, Any],
        result: str,
        ok: bool,
        duration_s: float,
        run_id: str,
    ) -> str | None:
        """After a tool call ran: `result` is what the model reads (`ok` False for an error).
        Returns None, or a line to show the user."""

    @hookspec
    def run_started(
        self, run_id: str, prompt: str, model: str, backend: str, tools: list[str]
    ) -> str | None:
        """A run starts (before the model is called). Returns None, or a line to show."""

    @hookspec
    def run_finished(
        self,
        run_id: str,
        prompt: str,
        status: str,
        answer: str,
        usage: dict[str, int],
        timings: dict[str, float],
    ) -> str | None:
        """A run ended with `status` and `answer` ("" when none). Returns None, or a line to
        show."""


def __getattr__(name: str) -> Any:
    """`BaseTool` and `register_tool`, Qwen-Agent's, imported when a plugin asks for them (so
    what needs no tool, the service's light client, never imports Qwen-Agent)."""
    if name in ("BaseTool", "register_tool"):
        from qwen_agent.tools import base

        return getattr(base, name)
    raise AttributeError(f"module 'agent.plugins' has no attribute {name!r}")


def installed_entry_points(group: str) -> list[EntryPoint]:
    """The installed packages' entry points in `group`: all of them, or, where
    `AGENT_LOAD_PLUGINS` is set, those of the distributions it names (empty: none)."""
    points = list(entry_points(group=group))
    allowed = os.environ.get(LOAD_PLUGINS_VARIABLE)
    if allowed is None:
        return points
    names = {name.strip().lower() for name in allowed.split(",") if name.strip()}
    return [p for p in points if p.dist is not None and p.dist.name.lower() in names]


def plugin_manager(*plugins: object) -> pluggy.PluginManager:
    """The hooks in force: installed plugins' (entry points) and `plugins`."""
    manager = pluggy.PluginManager("agent")
    manager.add_hookspecs(Hooks)
    for point in installed_entry_points(HOOKS_ENTRY_POINT_GROUP):
        manager.register(point.load(), name=point.name)
    for plugin in plugins:
        manager.register(plugin)
    return manager
