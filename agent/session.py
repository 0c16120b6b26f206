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
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from agent.config import CONTEXT_TOKENS, Settings
from agent.events import Event, Notice, RunFinished, RunStarted
from agent.history.recorder import RunRecorder
from agent.history.store import BEFORE_PROMPT, History, RunOrigin
from agent.history.transcript import trailing_calls
from agent.loop.approval import Ask
from agent.tools.mcp_context import ResourceContent, UserTurn
from agent.tools.mcp_requests import Questions

if TYPE_CHECKING:
    from agent.loop.assistant import AgentAssistant
    from agent.tools.toolset import Toolset

Show = Callable[[Event], None]


@dataclass
class TurnResult:
    """What one turn did: its status, the messages it sent (older turns may have been dropped
    to fit the context window) and the messages it added (no thinking). Tool calls the given
    messages ended with (run first, see `AgentAssistant`) count as added, not sent."""

    status: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    added: list[dict[str, Any]] = field(default_factory=list)


class Session(Protocol):
    """A model with its tools, ready for turns; closed when the command ends."""

    tool_names: list[str]

    def turn(
        self,
        messages: list[dict[str, Any]],
        show: Show,
        time_limit_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> TurnResult:
        """Run the assistant on `messages` (the current user turn last, or what the model goes
        on from), showing each event; `stop` set from another thread cancels it as Ctrl-C
        does (what was shown is kept)."""
        ...

    def get_prompt(self, server: str, name: str, arguments: dict[str, str]) -> list[dict[str, str]]:
        """An MCP server's prompt, rendered by it with `arguments` (role and text messages)."""
        ...

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]:
        """An MCP server's resource, read."""
        ...

    def close(self) -> None: ...


class LocalSession:
    """A session in this process: the loaded model, the open tools, the assistant over them,
    and the hooks in force: installed plugins', the user's hook commands (run with `environ`,
    else this process's environment) and, with `ask`, chat's approval.

    `ask` is asked before the tool calls the approval policy names (None: no approvals);
    `questions` answers what the MCP servers ask during a turn (None: nobody can be asked,
    so a sampling request the policy would ask about, and every form, are refused)."""

    def __init__(
        self,
        settings: Settings,
        llm: Any,
        toolset: Toolset,
        ask: Ask | None,
        environ: Mapping[str, str] | None = None,
        questions: Questions | None = None,
    ) -> None:
        from agent.loop.approval import Approver
        from agent.loop.assistant import build_assistant
        from agent.loop.context import reserve_for
        from agent.loop.hook_commands import CommandHooks
        from agent.loop.runner import run_info
        from agent.loop.sampler import completion_sampler
        from agent.loop.server_requests import RequestAnswerer
        from agent.plugins import plugin_manager

        commands = CommandHooks(settings.hooks, settings.hook_timeout, environ)
        approver = [Approver(settings.approve, ask)] if ask else []
        hooks = plugin_manager(commands, *approver)
        self.settings = settings
        self.toolset = toolset
        self.assistant: AgentAssistant = build_assistant(settings, llm, toolset, hooks)
        self.info = run_info(settings, toolset)
        self.reserve = reserve_for(settings, toolset)
        self.assistant.context_budget = int(settings.compact_at * CONTEXT_TOKENS) - self.reserve
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
        cancels it as Ctrl-C does, interrupting a running tool. Past `compact_at` of the
        window, the older turns are first compacted into a summary the model writes."""
        from agent.loop.compaction import compact_turns, conversation_tokens
        from agent.loop.context import check_prompt_fits, trim_turns
        from agent.loop.runner import run_events, show_run

        compaction = compact_turns(messages, self.reserve, self.settings.compact_at, self.summarize)
        notices = []
        if compaction.compacted_turns:
            turns = compaction.compacted_turns
            notices.append(
                Notice(
                    kind="compacted",
                    message=f"the {turns} oldest turn{'s' if turns > 1 else ''} "
                    f"({compaction.compacted_tokens:,} tokens) compacted into a summary the "
                    f"model wrote, to stay under {self.settings.compact_at:.0%} of the "
                    f"{CONTEXT_TOKENS:,}-token context: {compaction.summary}",
                )
            )
        sent, dropped = trim_turns(compaction.messages, self.reserve)
        check_prompt_fits(conversation_tokens(sent), self.reserve)
        if dropped:
            notices.append(
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
            notices=notices,
        )
        with self.toolset.answering(self.answerer):  # the servers' requests reach this turn
            status = show_run(events, _ContextLevel(show, self.fixed_tokens, sent, added).show)
        return TurnResult(status, sent[: len(sent) - trailing_calls(sent)], added)

    def get_prompt(self, server: str, name: str, arguments: dict[str, str]) -> list[dict[str, str]]:
        return self.toolset.servers().get_prompt(server, name, arguments)

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]:
        return self.toolset.servers().read_resource(server, uri)

    @property
    def fixed_tokens(self) -> int:
        """The tokens every prompt has besides the conversation: system prompt, tool schemas."""
        return self.reserve - min(self.settings.max_new_tokens, CONTEXT_TOKENS // 4)

    def summarize(self, transcript: str) -> str:
        """The model's summary of a transcript (thinking dropped)."""
        from agent.loop.compaction import SUMMARY_PROMPT
        from agent.loop.runner import without_thinking

        request = [
            {"role": "system", "content": SUMMARY_PROMPT},
            {"role": "user", "content": transcript},
        ]
        content: Any = ""
        for replies in self.assistant.llm.chat(messages=request, stream=True):  # the runs' path
            if replies:
                last = replies[-1]
                content = last.get("content") if isinstance(last, dict) else last.content
        return str(without_thinking({"content": content or ""})["content"])

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
    code interpreter's kernel from the `kernels` spares, else started on its first call). The
    user's hook commands run with `environ` too. `ask` and `questions`: see `LocalSession`."""
    from agent.loop.assistant import build_llm
    from agent.tools.toolset import open_tools_while

    loading = open_tools_while(lambda: build_llm(settings), settings, environ, mcp, kernels)
    with loading as (llm, toolset):
        yield LocalSession(settings, llm, toolset, ask, environ, questions)


class _ContextLevel:
    """Passes events on; `run_finished` gets how full the window is for the next turn."""

    def __init__(
        self,
        show: Show,
        fixed: int,
        sent: list[dict[str, Any]],
        added: list[dict[str, Any]],
    ) -> None:
        self._show, self._fixed, self._sent, self._added = show, fixed, sent, added

    def show(self, event: Event) -> None:
        if isinstance(event, RunFinished):
            from agent.loop.compaction import conversation_tokens

            used = self._fixed + conversation_tokens([*self._sent, *self._added])
            level = {
                "tokens": used,
                "window": CONTEXT_TOKENS,
                "percent": round(100 * used / CONTEXT_TOKENS),
            }
            event = replace(event, context=level)
        self._show(event)


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
        origin: RunOrigin | None = None,
    ) -> None:
        """`messages`: those so far (of the `conversation` resumed, or those a new one starts
        from, kept with it); `origin`: where the first run comes from (a fork, a resume)."""
        self.session = session
        self.settings = settings
        self.history = history
        self.kind = kind
        self.messages: list[dict[str, Any]] = list(messages or [])
        self.context: dict[str, int] = {}  # the last run's context level (`/context`)
        self.recorder = recorder
        if history is not None and recorder is None:
            conversation = conversation or history.new_conversation(kind, self.messages)
            self.recorder = RunRecorder(history, conversation, settings, origin)

    @property
    def conversation(self) -> str | None:
        """The conversation's id in the run history (None with history off)."""
        return self.recorder.conversation if self.recorder else None

    def turn(
        self,
        message: str | UserTurn,
        show: Show,
        time_limit_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> str:
        """Run one user turn (its text, or a `UserTurn` with a prompt's earlier messages and
        notices), showing and recording its events; the run's status. `stop`: see
        `Session.turn`."""
        turn = message if isinstance(message, UserTurn) else UserTurn(message)
        new = [*turn.context, {"role": "user", "content": turn.text}]
        return self._run(
            new, show, time_limit_s, before=turn.context, notices=turn.notices, stop=stop
        )

    def go_on(
        self,
        prompt: str,
        show: Show,
        calls: list[dict[str, Any]] | None = None,
        time_limit_s: float | None = None,
    ) -> str:
        """Let the model go on with the turn the messages so far end in (a fork's, before one
        of its steps; a resume's), no new user message; `calls`, tool calls that had not
        returned, run first. The run is recorded under `prompt`, the turn's, as continuing."""
        return self._run(list(calls or []), show, time_limit_s, prompt=prompt)

    def _run(
        self,
        new: list[dict[str, Any]],
        show: Show,
        time_limit_s: float | None,
        prompt: str | None = None,
        before: list[dict[str, Any]] | None = None,
        notices: list[str] | None = None,
        stop: threading.Event | None = None,
    ) -> str:
        """`before`: an MCP prompt's messages before the user's (kept with the run, marked);
        `notices`: about what the user sent, shown right after the run starts."""

        def shown(event: Event) -> None:
            if prompt is not None and isinstance(event, RunStarted):
                event = replace(event, prompt=prompt)
            for each in [event, *_notices_after(event, notices)]:
                if self.recorder:
                    self.recorder.show(each)
                if isinstance(each, RunFinished) and each.context:
                    self.context = dict(each.context)
                show(each)

        if self.recorder:
            self.recorder.continues = prompt is not None
        result = self.session.turn([*self.messages, *new], shown, time_limit_s, stop)
        self.messages = [*result.sent, *result.added]
        if self.history is not None and self.recorder and self.recorder.run:
            marked = [{**message, BEFORE_PROMPT: True} for message in before or []]
            self.history.set_messages(self.recorder.run, [*marked, *result.added])
        return result.status

    def reset(self) -> None:
        """Forget the conversation: the next turn starts a new one (in the history too)."""
        self.messages = []
        self.context = {}
        if self.history is not None:
            self.recorder = RunRecorder(
                self.history, self.history.new_conversation(self.kind), self.settings
            )


def _notices_after(event: Event, notices: list[str] | None) -> list[Notice]:
    """The `attachment` notices to show right after `run_started` (so the run records them)."""
    if not notices or not isinstance(event, RunStarted):
        return []
    return [Notice(kind="attachment", message=message) for message in notices]
