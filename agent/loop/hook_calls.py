"""Calling the hook points (agent/plugins.py `Hooks`): installed plugins, chat's approval and the
user's hook commands alike. A hook that fails never ends the run: before a tool call it refuses
the call; at the other points it is one line for the user (a `notice` of kind `hook`).
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

from agent.render import visible

log = logging.getLogger("agent")

NOTE_KIND = "hook"


def _failure(point: str, exc: Exception) -> str:
    said = " ".join(str(exc).split())
    return visible(f"a {point} hook failed: {type(exc).__name__}" + (f": {said}" if said else ""))


def refusal(
    hooks: pluggy.PluginManager, name: str, arguments: dict[str, Any], run_id: str
) -> str | None:
    """Why the hooks refuse this tool call, or None to let it run; a hook that raises refuses."""
    try:
        reason = hooks.hook.before_tool_call(name=name, arguments=arguments, run_id=run_id)
    except Exception as exc:  # a plugin's bug: the call does not run unchecked
        log.debug("before_tool_call hook failed", exc_info=True)
        return _failure("before_tool_call", exc) + "; the call was not run"
    return str(reason) if reason else None


def notes(hooks: pluggy.PluginManager, point: str, **arguments: Any) -> list[str]:
    """Call every `point` hook (after_tool_call, run_started, run_finished); the lines they
    return for the user, and one for a hook that raised."""
    try:
        said = getattr(hooks.hook, point)(**arguments)
    except Exception as exc:
        log.debug("%s hook failed", point, exc_info=True)
        return [_failure(point, exc)]
    return [visible(str(line)) for line in said if line]
