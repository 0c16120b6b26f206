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
    settings_from,
    tool_options,
)
from agent.config import Settings
from agent.errors import ConfigError
from agent.history.store import History


@click.command("run")
@click.argument("prompt", required=False)
@json_option("print JSON Lines events on stdout")
@model_options
@tool_options
@selection_options
@history_options
@service_options
def run(prompt: str | None, as_json: bool, **flags: Any) -> int:
    """Run one task and stream what happens.

    PROMPT is the task; with `-`, or when standard input is piped, what comes in on standard
    input is the task too (after PROMPT: `cat notes.txt | agent run "Summarize this"`).
    """
    from agent.render import JsonLinesRenderer, TerminalRenderer
    from agent.service.client import open_session
    from agent.session import Conversation

    text = read_prompt(prompt)
    settings = settings_from(flags)
    setup_logging(settings.debug)
    history = open_history(settings)
    renderer = JsonLinesRenderer() if as_json else TerminalRenderer(settings.show_thinking)
    with open_session(settings) as session:
        status = Conversation(session, settings, history, "run").turn(text, renderer.show)
    if status == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK if status == "answered" else EXIT_FAILED


def read_prompt(prompt: str | None) -> str:
    """The task: PROMPT, then standard input when it is `-` or piped (not a terminal)."""
    parts = [] if prompt in (None, "-") else [prompt]
    piped = sys.stdin is not None and not sys.stdin.isatty()
    if prompt == "-" or (piped and sys.stdin is not None):
        parts.append(sys.stdin.read())
    text = "\n\n".join(part.strip("\n") for part in parts if part and part.strip())
    if not text:
        raise ConfigError('no task: give it as an argument (agent run "...") or on standard input')
    return text


def open_history(settings: Settings) -> History | None:
    """The run history, unless logging is off (`--no-log`, `log = false`)."""
    return History(settings.history) if settings.log else None
