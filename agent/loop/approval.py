"""Asking the user before a tool call runs: `--approve`, built on the `before_tool_call` hook.

Policies: `auto` asks before every tool but the read-only ones (the time server's tools and the
shipped calculator, file and SQLite readers), so code, web fetches and unknown plugins need a
yes; `all` asks before every call; `code` before the code interpreter only; `none` never asks;
or a comma-separated list of tool names (an MCP server's name covers its tools).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.plugins import hookimpl

READ_ONLY_TOOLS = ("calculator", "files_search", "files_read", "sqlite_query")
READ_ONLY_SERVERS = ("time",)
Ask = Callable[[str, dict[str, Any]], str]  # shows the call, returns "y", "n" or "a" (always)


def needs_approval(policy: str, name: str) -> bool:
    """Whether `policy` asks before a call to tool `name`."""
    if policy == "none":
        return False
    if policy == "all":
        return True
    if policy == "auto":
        server = name.split("-", 1)[0] if "-" in name else ""
        return name not in READ_ONLY_TOOLS and server not in READ_ONLY_SERVERS
    if policy == "code":
        return name == "code_interpreter"
    listed = {part.strip() for part in policy.split(",") if part.strip()}
    return name in listed or name.split("-", 1)[0] in listed


class Approver:
    """The hook: asks through `ask` when the policy says so; `always` answers are kept."""

    def __init__(self, policy: str, ask: Ask) -> None:
        self.policy = policy
        self.ask = ask
        self.always: set[str] = set()

    # Asked last: the user is not asked about a call a plugin or a hook command refuses.
    @hookimpl(trylast=True)
    def before_tool_call(self, name: str, arguments: dict[str, Any]) -> str | None:
        """None to let the call run; else why the model gets an error result instead."""
        if name in self.always or not needs_approval(self.policy, name):
            return None
        answer = self.ask(name, arguments)
        if answer == "a":
            self.always.add(name)
            return None
        if answer == "y":
            return None
        return f"the user did not allow this call to {name}; do without it or ask them"
