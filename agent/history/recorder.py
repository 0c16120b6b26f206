"""Writing a run to the history as it is shown: a renderer like the others."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from agent.config import Settings
from agent.events import Event, RunStarted
from agent.history.store import History, RunOrigin

_SECRET_SETTINGS = ("api_key",)


def recorded_settings(settings: Settings) -> dict[str, Any]:
    """The settings a run used, as the history keeps them (no secrets)."""
    return {k: v for k, v in asdict(settings).items() if k not in _SECRET_SETTINGS}


class RunRecorder:
    """Stores each event of the runs of one conversation, in order, as it comes."""

    def __init__(
        self,
        history: History,
        conversation: str,
        settings: Settings,
        origin: RunOrigin | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """`extra` is kept with the settings (a task file: its path, hash and parameters)."""
        self.history = history
        self.conversation = conversation
        self.settings = {**recorded_settings(settings), **(extra or {})}
        self.origin = origin  # where the next run comes from (a fork's, a resume's)
        self.continues = False  # the next run goes on with the turn before it (no prompt)
        self.run: str | None = None
        self._seq = 0

    def show(self, event: Event) -> None:
        """Record `event` (a `run_started` opens a new run)."""
        if isinstance(event, RunStarted):
            origin, self.origin = self.origin, None
            self.run = self.history.start_run(
                self.conversation, event, self.settings, origin, self.continues
            )
            self._seq = 0
        if self.run is None:
            return
        self.history.add_event(self.run, self._seq, event)
        self._seq += 1
