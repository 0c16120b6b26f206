"""`agent chat`: a conversation in the terminal, on the same runner and renderers as `agent run`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from agent.cli.common import EXIT_OK, setup_logging
from agent.cli.options import conversation_options, settings_from
from agent.cli.questions import TERMINAL_QUESTIONS, ask_on_terminal
from agent.cli.run import open_history, read_prompt
from agent.errors import AgentError, ConfigError
from agent.history.store import History
from agent.history.views import replay
from agent.paths import chat_input_history, write_atomically
from agent.render import TerminalRenderer, visible
from agent.tools.mcp_context import (
    UserTurn,
    mentions,
    parse_prompt_arguments,
    prompt_turn,
    with_attachments,
)

if TYPE_CHECKING:
    from agent.session import Conversation, Show

HELP = """\
commands: /help  /tools  /context (how full the model's window is)  /reset (forget the
          conversation)  /save FILE (as Markdown)  /exit
          /prompt SERVER/PROMPT [KEY=VALUE ...]: send an MCP server's prompt
keys: Enter sends · Alt+Enter or Ctrl-J: a new line · Up/Down and Ctrl-R: what you typed before
      Ctrl-C stops the answer (at an empty prompt: leaves) · Ctrl-D leaves
@SERVER:URI in a message attaches that MCP resource (agent tools list shows them)
/think and /no_think in a message switch the model's thinking for that turn"""
OUR_COMMANDS = ("/help", "/tools", "/context", "/reset", "/save", "/prompt", "/exit", "/quit")


class LineInput:
    """The prompt: prompt_toolkit with multi-line input, a history file and Ctrl-R search."""

    def __init__(self, history_file: Path) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings

        keys = KeyBindings()

        @keys.add("enter")
        def _send(event: Any) -> None:
            event.current_buffer.validate_and_handle()

        @keys.add("escape", "enter")
        @keys.add("c-j")
        def _new_line(event: Any) -> None:
            event.current_buffer.insert_text("\n")

        @keys.add("c-c")
        def _stop(event: Any) -> None:
            if event.current_buffer.text:
                event.current_buffer.reset()
            else:
                event.app.exit(result=None)

        history_file.parent.mkdir(parents=True, exist_ok=True)
        self._session: Any = PromptSession(
            history=FileHistory(str(history_file)),
            multiline=True,
            key_bindings=keys,
            prompt_continuation="  ",
        )

    def read(self) -> str | None:
        """The next message; None when the user leaves (Ctrl-D, or Ctrl-C at an empty prompt)."""
        try:
            text = self._session.prompt("› ")
        except EOFError:
            return None
        return text if text is None else str(text)


@click.command("chat")
@click.argument("prompt", required=False)
@click.option("--continue", "go_on", is_flag=True, help="go on with the last chat")
@click.option("--resume", metavar="ID", help="go on with this conversation or run")
@conversation_options
def chat(prompt: str | None, go_on: bool, resume: str | None, **flags: Any) -> int:
    """Talk with the agent, turn after turn (PROMPT or piped input: the first turn)."""
    from agent.service.client import open_session
    from agent.session import Conversation

    first = read_prompt(prompt) if prompt or not sys.stdin.isatty() else None
    settings = settings_from(flags)
    setup_logging(settings.debug)
    history = open_history(settings)
    conversation, messages = _resumed(history, go_on, resume)
    renderer = TerminalRenderer(settings.show_thinking)
    with open_session(settings, ask_on_terminal, TERMINAL_QUESTIONS) as session:
        talk = Conversation(session, settings, history, "chat", conversation, messages)
        if history is not None and conversation is not None:
            _show_transcript(history, conversation, renderer)
        print(f"chat with {settings.model} · /help for commands · Ctrl-D to leave", file=sys.stderr)
        lines = LineInput(chat_input_history()) if sys.stdin.isatty() else None
        text = first
        while True:
            if text is None:
                text = lines.read() if lines is not None else None
                if text is None:
                    break
            if text.strip() and not _command(text, talk, renderer.show):
                _send(talk, UserTurn(text), renderer.show)
            elif text.split()[:1] in (["/exit"], ["/quit"]):
                break
            text = None
    return EXIT_OK


def _resumed(
    history: History | None, go_on: bool, resume: str | None
) -> tuple[str | None, list[dict[str, Any]]]:
    """The conversation to go on with, and its messages (none for a new chat)."""
    if not (go_on or resume):
        return None, []
    if history is None:
        raise ConfigError("--continue and --resume need the run history (drop --no-log)")
    conversation = history.conversation_of(resume) if resume else history.last_conversation()
    if conversation is None:
        raise ConfigError("no chat to continue yet; start one with: agent chat")
    return conversation, history.messages(conversation)


def _show_transcript(history: History, conversation: str, renderer: TerminalRenderer) -> None:
    """The conversation so far, as it looked (the prompts, then each run's events)."""
    for run in history.conversation_runs(conversation):
        if not run.continues:  # a resumed turn's prompt was shown with it
            print(visible(f"› {run.prompt}"))
        replay(history, run, renderer)


def _send(talk: Conversation, turn: UserTurn, show: Show) -> None:
    """Send a turn with the resources its `@server:uri` name; a reference that cannot be
    read is one line, and nothing is sent."""
    try:
        turn = with_attachments(
            talk.session, turn, mentions(turn.text), talk.settings.resource_limit
        )
    except AgentError as exc:
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return
    talk.turn(turn, show)


def _send_prompt(talk: Conversation, rest: str, show: Show) -> None:
    """`/prompt SERVER/PROMPT KEY=VALUE ...`: the server renders it; it is the next message."""
    try:
        words = shlex.split(rest)
    except ValueError as exc:
        print(f"/prompt: {exc}", file=sys.stderr)
        return
    if not words:
        print(
            "/prompt needs SERVER/PROMPT [KEY=VALUE ...], e.g. /prompt notes/recap", file=sys.stderr
        )
        return
    try:
        turn = prompt_turn(talk.session, words[0], parse_prompt_arguments(words[1:]))
    except AgentError as exc:
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return
    talk.turn(turn, show)


def _command(text: str, talk: Conversation, show: Show) -> bool:
    """Handle one of our commands; False when `text` is a message for the model."""
    words = text.strip().split(maxsplit=1)
    if not words or not words[0].startswith("/") or words[0] in ("/think", "/no_think"):
        return False
    name = words[0]
    if name not in OUR_COMMANDS:
        print(f"unknown command {visible(name)} (/help lists them)", file=sys.stderr)
    elif name == "/help":
        print(HELP, file=sys.stderr)
    elif name == "/tools":
        print(", ".join(talk.session.tool_names) or "no tools", file=sys.stderr)
    elif name == "/context":
        print(context_line(talk), file=sys.stderr)
    elif name == "/reset":
        talk.reset()
        print("conversation forgotten; the code interpreter keeps its state", file=sys.stderr)
    elif name == "/save":
        _save(talk.messages, words[1] if len(words) > 1 else "")
    elif name == "/prompt":
        _send_prompt(talk, words[1] if len(words) > 1 else "", show)
    return True


def context_line(talk: Conversation) -> str:
    """`/context`: how full the window was after the last turn, and when it is compacted."""
    at = f"older turns are compacted into a summary at {talk.settings.compact_at:.0%}"
    if not talk.context:
        return f"context: nothing yet this conversation; {at}"
    level = talk.context
    return (
        f"context: {level['tokens']:,} of {level['window']:,} tokens ({level['percent']} %) "
        f"after the last turn; {at}"
    )


def _save(messages: list[dict[str, Any]], where: str) -> None:
    if not where:
        print("/save needs a file name: /save chat.md", file=sys.stderr)
        return
    path = Path(where).expanduser()
    if not path.parent.is_dir():
        print(f"/save: directory {path.parent} does not exist", file=sys.stderr)
        return
    write_atomically(path, transcript_markdown(messages))
    print(f"saved to {path}", file=sys.stderr)


def transcript_markdown(messages: list[dict[str, Any]]) -> str:
    """The conversation as the model sees it, as Markdown."""
    parts = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "user":
            parts.append(f"**You:** {content}")
        elif role == "function":
            parts.append(f"**Tool result** `{message.get('name')}`:\n\n```\n{content}\n```")
        elif message.get("function_call"):
            call = message["function_call"]
            parts.append(f"**Tool call** `{call.get('name')}`: `{call.get('arguments')}`")
        elif content:
            parts.append(f"**Assistant:** {content}")
    return "\n\n".join(parts) + "\n"
