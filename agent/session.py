"""The session core: the one place that assembles settings → model + tools → assistant → runner.

`agent run`, `agent chat`, scheduled jobs and the resident service all run their turns on a
`Session`: one built in this process (`open_local_session`: the model loads while the tools
start), or the resident service's, reached through the light client
(`agent.service.client.open_session` picks, by the `service` setting). Either way the caller
records the events (a `RunRecorder` among the renderers) and keeps the conversation
(`Conversation`), so the history is written by the process the user started.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.config import CONTEXT_TOKENS, Settings
from agent.events import Event, Notice, RunStarted
from agent.history.recorder import RunRecorder
from agent.history.store import BEFORE_PROMPT, History
from agent.render import Tee
from agent.tools.mcp_context import ResourceContent, UserTurn
from agent.tools.mcp_requests import Questions

if TYPE_CHECKING:
    from agent.loop.assistant import AgentAssistant
    from agent.tools.toolset import Toolset

log = logging.getLogger("agent")

Show = Callable[[Event], None]
Ask = Callable[[str, dict[str, Any]], str]  # shows a tool call, returns "y", "n" or "a" (always)


@dataclass
class TurnResult:
    """What one turn did: its status, the messages it sent (older turns may have been dropped
    to fit the context window) and the messages it added (no thinking)."""

    status: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    added: list[dict[str, Any]] = field(default_factory=list)


class Session(Protocol):
    """A model with its tools, ready for turns; closed when the command ends."""

    tool_names: list[str]

    def turn(
        self, messages: list[dict[str, Any]], show: Show, time_limit_s: float | None = None
    ) -> TurnResult:
        """Run the assistant on `messages` (the current user turn last), showing each event."""
        ...

    def get_prompt(self, server: str, name: str, arguments: dict[str, str]) -> list[dict[str, str]]:
        """An MCP server's prompt, rendered by it with `arguments` (role and text messages)."""
        ...

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]:
        """An MCP server's resource, read."""
        ...

    def close(self) -> None: ...


class LocalSession:
    """A session in this process: the loaded model, the open tools, the assistant over them.

    `ask` is asked before the tool calls the approval policy names (None: no approvals);
    `questions` answers what the MCP servers ask during a turn (None: nobody can be asked,
    so a sampling request the policy would ask about, and every form, are refused)."""

    def __init__(
        self,
        settings: Settings,
        llm: Any,
        toolset: Toolset,
        ask: Ask | None,
        questions: Questions | None = None,
    ) -> None:
        from agent.loop.approval import Approver
        from agent.loop.assistant import build_assistant
        from agent.loop.context import reserve_for
        from agent.loop.runner import run_info
        from agent.loop.sampler import completion_sampler
        from agent.loop.server_requests import RequestAnswerer
        from agent.plugins import plugin_manager

        hooks = plugin_manager(Approver(settings.approve, ask)) if ask else None
        self.settings = settings
        self.toolset = toolset
        self.assistant: AgentAssistant = build_assistant(settings, llm, toolset, hooks)
        self.info = run_info(settings, toolset)
        self.reserve = reserve_for(settings, toolset)
        self.tool_names = [tool.name for tool in toolset.tools]
        # Bound now the model is built: the servers started while it loaded.
        self.answerer = RequestAnswerer(
            policy=settings.approve,
            max_tokens=settings.sampling_max_tokens,
            model=settings.model,
            sampler=completion_sampler(llm, settings),
            questions=questions,
            notify=self.assistant.notify,
        )

    def turn(
        self,
        messages: list[dict[str, Any]],
        show: Show,
        time_limit_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> TurnResult:
        """Run one turn; `stop` set (by the service, for a client that cancelled or left)
        cancels it as Ctrl-C does, interrupting a running tool."""
        from agent.loop.context import check_prompt_fits, message_tokens, trim_turns
        from agent.loop.runner import run_events, show_run

        sent, dropped = trim_turns(messages, self.reserve)
        check_prompt_fits(sum(message_tokens(m) for m in sent), self.reserve)
        if dropped:
            show(
                Notice(
                    kind="context",
                    message=f"the {dropped} oldest turn{'s' if dropped > 1 else ''} dropped to "
                    f"stay within the model's {CONTEXT_TOKENS:,}-token context",
                )
            )
        added: list[dict[str, Any]] = []
        events = run_events(
            self.assistant,
            sent,
            self.info,
            added,
            time_limit_s=time_limit_s,
            stop=stop,
            on_stop=self.toolset.interrupt,
        )
        with self.toolset.answering(self.answerer):  # the servers' requests reach this turn
            status = show_run(events, show)
        return TurnResult(status, sent, added)

    def get_prompt(self, server: str, name: str, arguments: dict[str, str]) -> list[dict[str, str]]:
        return self.toolset.servers().get_prompt(server, name, arguments)

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]:
        return self.toolset.servers().read_resource(server, uri)

    def close(self) -> None:
        self.toolset.close()


@contextlib.contextmanager
def open_local_session(
    settings: Settings,
    ask: Ask | None = None,
    environ: Mapping[str, str] | None = None,
    mcp: Any = None,
    kernels: Any = None,
    questions: Questions | None = None,
) -> Iterator[LocalSession]:
    """Load the model while the tools start (the servers' environment from `environ`, else
    this process's; MCP connections from the `mcp` pool, else started for this session; the
    code interpreter's kernel from the `kernels` spares, else started on its first call).
    `ask` and `questions`: see `LocalSession`."""
    from agent.loop.assistant import build_llm
    from agent.tools.toolset import open_tools_while

    loading = open_tools_while(lambda: build_llm(settings), settings, environ, mcp, kernels)
    with loading as (llm, toolset):
        yield LocalSession(settings, llm, toolset, ask, questions)


class Conversation:
    """The messages so far and where they are recorded: what a run, a chat or a job keeps
    between turns."""

    def __init__(
        self,
        session: Session,
        settings: Settings,
        history: History | None,
        kind: str,
        conversation: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        recorder: RunRecorder | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.history = history
        self.kind = kind
        self.messages: list[dict[str, Any]] = list(messages or [])
        self.recorder = recorder
        if history is not None and recorder is None:
            conversation = conversation or history.new_conversation(kind)
            self.recorder = RunRecorder(history, conversation, settings)

    @property
    def conversation(self) -> str | None:
        """The conversation's id in the run history (None with history off)."""
        return self.recorder.conversation if self.recorder else None

    def turn(self, message: str | UserTurn, show: Show, time_limit_s: float | None = None) -> str:
        """Run one user turn (its text, or a `UserTurn` with a prompt's earlier messages and
        notices), showing and recording its events; the run's status."""
        turn = message if isinstance(message, UserTurn) else UserTurn(message)
        shown = Tee(self.recorder, _Renderer(show)).show if self.recorder else show
        if turn.notices:
            shown = _NoticesAfterStart(shown, turn.notices).show
        new = [*turn.context, {"role": "user", "content": turn.text}]
        result = self.session.turn([*self.messages, *new], shown, time_limit_s)
        self.messages = [*result.sent, *result.added]
        if self.history is not None and self.recorder and self.recorder.run:
            before = [{**context, BEFORE_PROMPT: True} for context in turn.context]
            self.history.set_messages(self.recorder.run, [*before, *result.added])
        return result.status

    def reset(self) -> None:
        """Forget the conversation: the next turn starts a new one (in the history too)."""
        self.messages = []
        if self.history is not None:
            self.recorder = RunRecorder(
                self.history, self.history.new_conversation(self.kind), self.settings
            )


class _NoticesAfterStart:
    """Shows `notices` (about what the user sent) right after the run starts, so they are
    shown and recorded with the run."""

    def __init__(self, show: Show, notices: list[str]) -> None:
        self._show = show
        self._notices = list(notices)

    def show(self, event: Event) -> None:
        self._show(event)
        if isinstance(event, RunStarted):
            for message in self._notices:
                self._show(Notice(kind="attachment", message=message))
            self._notices = []


class _Renderer:
    def __init__(self, show: Show) -> None:
        self.show = show
