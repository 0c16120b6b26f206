"""`agent run PROMPT`: one task, streamed as it happens."""

from __future__ import annotations

import sys
from typing import Any

import click

from agent.cli.common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, setup_logging
from agent.cli.options import (
    history_options,
    json_option,
    model_options,
    selection_options,
    service_options,
    setting_options,
    settings_from,
    tool_options,
)
from agent.config import Settings
from agent.errors import ConfigError
from agent.history.store import History
from agent.tools.mcp_context import (
    UserTurn,
    parse_prompt_arguments,
    parse_prompt_ref,
    parse_resource_ref,
    prompt_turn,
    with_attachments,
)


@click.command("run")
@click.argument("prompt", required=False)
@json_option("print JSON Lines events on stdout")
@click.option(
    "--prompt-from",
    metavar="SERVER/PROMPT",
    help="the task is this MCP server's prompt, rendered by the server (PROMPT is added to it)",
)
@click.option(
    "--arg",
    "prompt_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="an argument of the --prompt-from prompt (repeatable)",
)
@click.option(
    "--attach",
    multiple=True,
    metavar="SERVER:URI",
    help="add this MCP resource to the task (repeatable)",
)
@model_options
@tool_options
@selection_options
@setting_options("approve")
@history_options
@service_options
def run(
    prompt: str | None,
    as_json: bool,
    prompt_from: str | None,
    prompt_args: tuple[str, ...],
    attach: tuple[str, ...],
    **flags: Any,
) -> int:
    """Run one task and stream what happens.

    PROMPT is the task; with `-`, or when standard input is piped, what comes in on standard
    input is the task too (after PROMPT: `cat notes.txt | agent run "Summarize this"`).
    With --prompt-from, an MCP server's prompt is the task, and PROMPT is added to it.
    """
    from agent.cli.questions import TERMINAL_QUESTIONS
    from agent.render import JsonLinesRenderer, TerminalRenderer
    from agent.service.client import open_session
    from agent.session import Conversation

    if prompt_args and not prompt_from:
        raise ConfigError("--arg gives an argument of --prompt-from's prompt; add --prompt-from")
    arguments = parse_prompt_arguments(prompt_args)
    if prompt_from:
        parse_prompt_ref(prompt_from)
    attachments = [parse_resource_ref(ref) for ref in attach]
    text = read_prompt(prompt, required=not prompt_from)
    settings = settings_from(flags)
    setup_logging(settings.debug)
    history = open_history(settings)
    renderer = JsonLinesRenderer() if as_json else TerminalRenderer(settings.show_thinking)
    with open_session(settings, questions=TERMINAL_QUESTIONS) as session:
        turn = UserTurn(text)
        if prompt_from:
            turn = with_text(prompt_turn(session, prompt_from, arguments), text)
        turn = with_attachments(session, turn, attachments, settings.resource_limit)
        status = Conversation(session, settings, history, "run").turn(turn, renderer.show)
    if status == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK if status == "answered" else EXIT_FAILED


def read_prompt(prompt: str | None, required: bool = True) -> str:
    """The task: PROMPT, then standard input when it is `-` or piped (not a terminal)."""
    parts = [] if prompt in (None, "-") else [prompt]
    piped = sys.stdin is not None and not sys.stdin.isatty()
    if prompt == "-" or (piped and sys.stdin is not None):
        parts.append(sys.stdin.read())
    text = "\n\n".join(part.strip("\n") for part in parts if part and part.strip())
    if not text and required:
        raise ConfigError('no task: give it as an argument (agent run "...") or on standard input')
    return text


def with_text(turn: UserTurn, text: str) -> UserTurn:
    """`turn` with `text` added after its own (a note on a server's prompt)."""
    if not text:
        return turn
    return UserTurn(f"{turn.text}\n\n{text}", turn.context, turn.notices)


def open_history(settings: Settings) -> History | None:
    """The run history, unless logging is off (`--no-log`, `log = false`)."""
    return History(settings.history) if settings.log else None
