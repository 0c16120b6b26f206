"""The page's chats: conversations on the session core (`agent.session.Conversation`), as
`agent chat` has them, over one session (the resident service's where it is on, else one in
this process), opened on the first turn.

Turns run one at a time on one worker thread, which alone touches the session and the run
history (an SQLite connection belongs to its thread). Each turn's events go to the page
through a `TurnFeed`: as the event dicts `--json` prints, plus what the page needs to show
them (a text's Markdown rendered and sanitized so far, a tool's arguments and result
pretty-printed). Approvals wait for the page's buttons; Stop cancels the answer as Ctrl-C
does, keeping what was shown."""

from __future__ import annotations

import contextlib
import queue
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.config import Settings
from agent.errors import AgentError
from agent.events import Answer, Event, Text, ToolCall, ToolResult, event_from_dict
from agent.history.store import History
from agent.ui.markdown import render_markdown
from agent.ui.timeline import pretty

if TYPE_CHECKING:
    from agent.session import Conversation

POLL_S = 0.25
RENDER_EVERY_S = 0.1  # how often a streaming answer's Markdown is rendered again
APPROVAL_ANSWERS = ("y", "n", "a")


class PageEvents:
    """Events as the page takes them: the event's dict, plus what the page needs to show it
    (tool arguments and results pretty-printed; the model's text since its last tool call as
    sanitized Markdown, rendered at most every `RENDER_EVERY_S` while it streams, so a long
    answer is not sent again whole at every token: the deltas between show as plain text)."""

    def __init__(self, render_every_s: float = 0.0) -> None:
        self._segment = ""  # the model's text since its last tool call
        self._every = render_every_s
        self._rendered_at = float("-inf")
        self._pending = False  # text came since the segment was last rendered

    def items(self, event: Event) -> list[dict[str, Any]]:
        """What the page gets for `event`: its item, after the segment's rendering when
        text came since the last and this event is no text."""
        if isinstance(event, Text):
            self._segment += event.delta
            item = event.to_dict()
            if time.monotonic() - self._rendered_at >= self._every:
                item["html"] = self._render()
            else:
                self._pending = True
            return [item]
        before = [{"type": "text", "delta": "", "html": self._render()}] if self._pending else []
        item = event.to_dict()
        if isinstance(event, Answer):
            item["html"] = render_markdown(event.text)
        elif isinstance(event, ToolCall):
            self._segment = ""
            item["pretty"] = pretty(event.arguments)
        elif isinstance(event, ToolResult):
            item["pretty"] = pretty(event.uncut or event.content)
        return [*before, item]

    def _render(self) -> str:
        self._rendered_at, self._pending = time.monotonic(), False
        return render_markdown(self._segment)


def past_items(history: History, conversation: str) -> list[dict[str, Any]]:
    """A conversation so far, as the page shows it: each prompt, then its run's events."""
    items: list[dict[str, Any]] = []
    for run in history.conversation_runs(conversation):
        if not run.continues:
            items.append({"type": "user", "text": run.prompt})
        view = PageEvents()
        for data in history.events(run.id):
            items.extend(view.items(event_from_dict(data)))
    return items


class TurnFeed:
    """One turn's events on their way to the page, and the page's answers back."""

    def __init__(self) -> None:
        self.items: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.answers: queue.Queue[str] = queue.Queue()
        self.stop = threading.Event()
        self.finished = threading.Event()
        self._view = PageEvents(RENDER_EVERY_S)

    def put(self, item: dict[str, Any]) -> None:
        self.items.put(item)

    def next(self) -> dict[str, Any] | None:
        """The next item; `{"type": "tick"}` when none came for a while; None at the end."""
        try:
            return self.items.get(timeout=POLL_S)
        except queue.Empty:
            return {"type": "tick"}

    def show(self, event: Event) -> None:
        """An event for the page."""
        for item in self._view.items(event):
            self.put(item)

    def ask(self, name: str, arguments: dict[str, Any]) -> str:
        """Ask the page whether the call may run: y, n or a (always); n if stopped."""
        self.put({"type": "approval", "name": name, "pretty": pretty(arguments)})
        while not self.stop.is_set():
            try:
                answer = self.answers.get(timeout=POLL_S)
            except queue.Empty:
                continue
            self.put({"type": "approved" if answer != "n" else "refused", "name": name})
            return answer
        return "n"

    def end(self, status: str) -> None:
        self.put({"type": "turn_done", "status": status})
        self.finished.set()
        self.items.put(None)


@dataclass
class Chat:
    """One chat of the page: the conversation it goes on with (a resumed one's id and
    messages), its Conversation once a turn made one, and the turn in progress."""

    id: str
    resumed: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    talk: Conversation | None = None  # made on the worker thread
    feed: TurnFeed | None = None


class ChatRoom:
    """The chats of one `agent ui`, on one session."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.chats: dict[str, Chat] = {}
        self.tool_names: list[str] = []
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="agent-ui-turns")
        self._open = contextlib.ExitStack()  # the session and history, on the worker thread
        self._session: Any = None
        self._history: History | None = None
        self._current: TurnFeed | None = None
        self._busy = threading.Lock()

    def new_chat(
        self, resumed: str | None = None, messages: list[dict[str, Any]] | None = None
    ) -> Chat:
        """A new chat; with `resumed`, one that goes on with that conversation."""
        chat = Chat(secrets.token_hex(8), resumed, list(messages or []))
        self.chats[chat.id] = chat
        return chat

    def start_turn(self, chat: Chat, text: str) -> TurnFeed:
        """Queue a turn of `chat`; its feed shows it as it runs."""
        feed = TurnFeed()
        chat.feed = feed
        if self._busy.locked():
            feed.put(
                {
                    "type": "notice",
                    "kind": "waiting",
                    "message": "another chat is answering; waiting",
                }
            )
        self._worker.submit(self._turn, chat, text, feed)
        return feed

    def answer(self, chat: Chat, answer: str) -> None:
        """The page's answer to the approval its turn is waiting for."""
        if chat.feed is not None:
            chat.feed.answers.put(answer)

    def stop(self, chat: Chat) -> None:
        """Stop the chat's answer (what was shown is kept)."""
        if chat.feed is not None:
            chat.feed.stop.set()

    def stop_all(self) -> None:
        """Stop every chat's answer (the page is stopping)."""
        for chat in list(self.chats.values()):
            self.stop(chat)

    def close(self) -> None:
        """Stop what runs, then close the session (its kernel) and the history."""
        self.stop_all()
        closing = self._worker.submit(self._open.close)
        self._worker.shutdown(wait=True)
        closing.result()

    def _turn(self, chat: Chat, text: str, feed: TurnFeed) -> None:
        status = "error"
        with self._busy:
            self._current = feed
            try:
                talk = self._conversation(chat, feed)
                if not feed.stop.is_set():
                    status = talk.turn(text, feed.show, stop=feed.stop)
            except AgentError as exc:
                feed.put({"type": "error", "message": str(exc), "where": "agent"})
            except Exception as exc:  # the page says what went wrong; the room goes on
                feed.put(
                    {"type": "error", "message": f"{type(exc).__name__}: {exc}", "where": "agent"}
                )
            finally:
                self._current = None
                feed.end(status)

    def _conversation(self, chat: Chat, feed: TurnFeed) -> Conversation:
        """The chat's Conversation (the session opened first, if this is the first turn)."""
        from agent.session import Conversation

        if self._session is None:
            from agent.service.client import open_session

            feed.put({"type": "status", "message": "starting the model and the tools…"})
            self._history = History(self.settings.history) if self.settings.log else None
            if self._history is not None:
                self._open.callback(self._history.close)
            self._session = self._open.enter_context(open_session(self.settings, self._ask))
            self.tool_names = list(self._session.tool_names)
        if chat.talk is None:
            chat.talk = Conversation(
                self._session, self.settings, self._history, "chat", chat.resumed, chat.messages
            )
        return chat.talk

    def _ask(self, name: str, arguments: dict[str, Any]) -> str:
        """Approval, asked on the page of the turn in progress."""
        feed = self._current
        answer = feed.ask(name, arguments) if feed is not None else "n"
        return answer if answer in APPROVAL_ANSWERS else "n"
