"""A conversation with the assistant, turn after turn: what `agent chat` drives.

The model, the tools (and the code interpreter's state) stay loaded for the whole session.
Each turn runs through the same runner and renderers as `agent run`; the messages kept for the
next turn drop the thinking; the oldest turns are dropped, with a notice, when the
conversation would not fit in the context window beside the system prompt, the tool schemas
and the room for the answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.config import CONTEXT_TOKENS, Settings
from agent.events import Event, Notice
from agent.history.recorder import RunRecorder
from agent.history.store import History
from agent.loop.assistant import AgentAssistant
from agent.loop.context import trim_turns
from agent.loop.runner import RunInfo, run_events, show_run
from agent.render import Tee


class ChatSession:
    """The conversation so far, and how to run its next turn."""

    def __init__(
        self,
        assistant: AgentAssistant,
        info: RunInfo,
        settings: Settings,
        reserve: int,
        history: History | None,
        conversation: str | None = None,
        messages: list[dict[str, Any]] | None = None,
    ) -> None:
        self.assistant = assistant
        self.info = info
        self.settings = settings
        self.reserve = reserve
        self.history = history
        self.messages: list[dict[str, Any]] = list(messages or [])
        self.recorder: RunRecorder | None = None
        if history is not None:
            conversation = conversation or history.new_conversation("chat")
            self.recorder = RunRecorder(history, conversation, settings)

    @property
    def conversation(self) -> str | None:
        """The conversation's id in the run history (None with history off)."""
        return self.recorder.conversation if self.recorder else None

    def turn(self, text: str, show: Callable[[Event], None]) -> str:
        """Run one user turn, showing its events; the run's status."""
        messages, dropped = trim_turns(
            [*self.messages, {"role": "user", "content": text}], self.reserve
        )
        if dropped:
            show(
                Notice(
                    kind="context",
                    message=f"the {dropped} oldest turn{'s' if dropped > 1 else ''} dropped to "
                    f"stay within the model's {CONTEXT_TOKENS:,}-token context",
                )
            )
        transcript: list[dict[str, Any]] = []
        events = run_events(self.assistant, messages, self.info, transcript)
        shown = Tee(self.recorder, _Show(show)).show if self.recorder else show
        status = show_run(events, shown)
        self.messages = [*messages, *transcript]
        if self.history is not None and self.recorder and self.recorder.run:
            self.history.set_messages(self.recorder.run, transcript)
        return status

    def reset(self) -> None:
        """Forget the conversation: the next turn starts a new one (in the history too)."""
        self.messages = []
        if self.history is not None:
            self.recorder = RunRecorder(
                self.history, self.history.new_conversation("chat"), self.settings
            )


class _Show:
    def __init__(self, show: Callable[[Event], None]) -> None:
        self.show = show
