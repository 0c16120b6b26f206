"""`agent run PROMPT` or `agent run -t FILE`: one task, streamed as it happens."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from agent.events import Answer, Event
from agent.history.recorder import RunRecorder
from agent.history.store import History
from agent.tools.mcp_context import (
    UserTurn,
    parse_prompt_arguments,
    parse_prompt_ref,
    parse_resource_ref,
    prompt_turn,
    with_attachments,
)

if TYPE_CHECKING:
    from agent.session import Ask
    from agent.tasks import Task


@click.command("run")
@click.argument("prompt", required=False)
@click.option(
    "-t",
    "--task",
    "task_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="run this task file (TOML) instead of PROMPT",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="a parameter of the task file (repeatable)",
)
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
@json_option("print JSON Lines events on stdout")
@model_options
@tool_options
@selection_options
@history_options
@service_options
@setting_options("approve")
def run(
    prompt: str | None,
    task_file: Path | None,
    params: tuple[str, ...],
    prompt_from: str | None,
    prompt_args: tuple[str, ...],
    attach: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> int:
    """Run one task and stream what happens.

    PROMPT is the task; with `-`, or when standard input is piped, what comes in on standard
    input is the task too (after PROMPT: `cat notes.txt | agent run "Summarize this"`). With
    `-t FILE`, a task file is the task: its prompt with `--param` values, its settings (flags
    still win), its time limit and its output. With --prompt-from, an MCP server's prompt is
    the task, and PROMPT is added to it.
    """
    from agent.cli.questions import TERMINAL_QUESTIONS
    from agent.loop.context import check_task_fits
    from agent.render import JsonLinesRenderer, TerminalRenderer
    from agent.service.client import open_session
    from agent.session import Conversation
    from agent.tasks import bind, deliver, load_task, parse_params, render_prompt, task_settings

    task, record, ask = None, None, None
    if prompt_args and not prompt_from:
        raise ConfigError("--arg gives an argument of --prompt-from's prompt; add --prompt-from")
    arguments = parse_prompt_arguments(prompt_args)
    if prompt_from:
        parse_prompt_ref(prompt_from)
    attachments = [parse_resource_ref(ref) for ref in attach]
    if task_file is None:
        if params:
            raise click.UsageError("--param goes with a task file (-t FILE)")
        text = read_prompt(prompt, required=not prompt_from)
        settings = settings_from(flags)
    else:
        if prompt is not None or prompt_from:
            raise click.UsageError("give a PROMPT or a task file (-t FILE), not both")
        task = load_task(task_file)
        values = bind(task, parse_params(params))
        text, record = render_prompt(task, values), {"task": task.record(values)}
        settings = settings_from(flags, base=task_settings(task))
        ask = _task_ask(task)
    setup_logging(settings.debug)
    check_task_fits(text, settings)
    history = open_history(settings)
    renderer = JsonLinesRenderer() if as_json else TerminalRenderer(settings.show_thinking)
    answers = _Answers(renderer.show)
    with open_session(settings, ask, questions=TERMINAL_QUESTIONS) as session:
        turn = UserTurn(text)
        if prompt_from:
            turn = with_text(prompt_turn(session, prompt_from, arguments), text)
        turn = with_attachments(session, turn, attachments, settings.resource_limit)
        recorder = _recorder(history, settings, record)
        talk = Conversation(session, settings, history, "run", recorder=recorder)
        status = talk.turn(turn, answers.show, task.time_limit_s if task else None)
    if status == "cancelled":
        return EXIT_CANCELLED
    if status != "answered":
        return EXIT_FAILED
    if task is not None and answers.last is not None:
        written = deliver(task, answers.last)  # TaskOutputError: one line, exit 1
        if written is not None:
            print(f"wrote {written}", file=sys.stderr)
    return EXIT_OK


class _Answers:
    """Passes each event on, keeping the last answer (a task's output is made from it)."""

    def __init__(self, show: Any) -> None:
        self._show = show
        self.last: str | None = None

    def show(self, event: Event) -> None:
        if isinstance(event, Answer):
            self.last = event.text
        self._show(event)


def _task_ask(task: Task) -> Ask | None:
    """A task file that sets `approve` is asked on the terminal, as chat asks (`agent run`
    alone never asks)."""
    if "approve" not in task.settings:
        return None
    from agent.cli.chat import ask_on_terminal

    return ask_on_terminal


def _recorder(
    history: History | None, settings: Settings, record: dict[str, Any] | None
) -> RunRecorder | None:
    """The run's recorder, keeping the task file's path, hash and parameters with it."""
    if history is None:
        return None
    return RunRecorder(history, history.new_conversation("run"), settings, extra=record)


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


def open_history(settings: Settings) -> History | None:
    """The run history, unless logging is off (`--no-log`, `log = false`)."""
    return History(settings.history) if settings.log else None


def with_text(turn: UserTurn, text: str) -> UserTurn:
    """`turn` with `text` added after its own (a note on a server's prompt)."""
    if not text:
        return turn
    return UserTurn(f"{turn.text}\n\n{text}", turn.context, turn.notices)
