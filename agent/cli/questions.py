"""Asking the user in the terminal: before a tool call (or an MCP server's sampling request)
runs, and an MCP server's form (elicitation).

Everything a server or the model wrote is shown through `visible()`. With nobody at a
terminal (standard input is not one: a script, a pipe, `--json` output read by a program)
nothing is asked: the call or request is refused, and the reason said.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from agent.render import visible
from agent.tools.elicitation_form import FormField, form_fields
from agent.tools.mcp_requests import ElicitationRequest, Elicited, Questions, RequestRefused

NO_TERMINAL = "standard input is not a terminal"


def at_terminal() -> bool:
    """Whether someone can be asked: standard input is a terminal."""
    return sys.stdin is not None and sys.stdin.isatty()


def ask_on_terminal(name: str, arguments: dict[str, Any]) -> str:
    """Show the call with its exact arguments and ask: y, n or a (always for this tool)."""
    shown = visible(f"{name} {json.dumps(arguments, ensure_ascii=False)}")
    if not at_terminal():
        print(f"refused (no terminal to ask): {shown}", file=sys.stderr)
        return "n"
    print(f"allow {shown}?", file=sys.stderr)
    while True:
        answer = _read("[y]es, [n]o, [a]lways for this tool: ")
        if answer is None:
            return "n"
        if answer[:1].lower() in ("y", "n", "a"):
            return answer[:1].lower()


def approve_on_terminal(name: str, arguments: dict[str, Any]) -> str:
    """`ask_on_terminal` for an MCP server's request; `RequestRefused` with nobody at a
    terminal."""
    if not at_terminal():  # said in the run's notice
        raise RequestRefused(
            f"the sampling request was refused: nobody can approve it ({NO_TERMINAL}; "
            "--approve none allows it)"
        )
    return ask_on_terminal(name, arguments)


def elicit_on_terminal(request: ElicitationRequest) -> Elicited:
    """Show the server's message and ask for each field of its form (or to open its URL);
    the user may decline or cancel instead. `RequestRefused` with nobody at a terminal."""
    if not at_terminal():  # said in the run's notice
        raise RequestRefused(f"nobody can answer the form ({NO_TERMINAL})")
    try:
        fields = [] if request.url else form_fields(request.schema)
    except ValueError as exc:
        raise RequestRefused(f"this form cannot be asked in a terminal: {exc}") from None
    server, message = visible(request.server), visible(request.message)
    print(f"MCP server {server} asks: {message}", file=sys.stderr)
    if request.url:
        print(f"  open {visible(request.url)}", file=sys.stderr)
    what = "[a]ccept (I opened it)" if request.url else "[a]nswer"
    while True:
        choice = _read(f"{what}, [d]ecline, [c]ancel: ")
        if choice is None or choice[:1].lower() == "c":
            return Elicited("cancel")
        if choice[:1].lower() == "d":
            return Elicited("decline")
        if choice[:1].lower() == "a":
            break
    content: dict[str, Any] = {}
    for field in fields:
        value = _ask_field(field)
        if value is _CANCELLED:
            return Elicited("cancel")
        if value is not None:
            content[field.name] = value
    return Elicited("accept", content)


TERMINAL_QUESTIONS = Questions(approve=approve_on_terminal, elicit=elicit_on_terminal)

_CANCELLED = object()


def _ask_field(field: FormField) -> Any:
    """One field's value, asked until it is valid; None left empty, `_CANCELLED` at EOF."""
    label = visible(field.title) + ("" if field.required else " (optional)")
    if field.description:
        label += f" — {visible(field.description)}"
    shown = {True: "yes", False: "no"}.get(field.default, field.default)
    default = f" [{visible(str(shown))}]" if field.default is not None else ""
    while True:
        text = _read(f"  {label} ({visible(field.hint())}){default}: ")
        if text is None:
            return _CANCELLED
        try:
            return field.parse(text)
        except ValueError as exc:
            print(f"  {visible(str(exc))}", file=sys.stderr)


def _read(prompt: str) -> str | None:
    """A line typed after `prompt` (on stderr); None at end of input."""
    print(prompt, end="", file=sys.stderr, flush=True)
    try:
        return input().strip()
    except EOFError:
        return None
