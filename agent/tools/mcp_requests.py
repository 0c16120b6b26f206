"""What MCP servers ask of us during a run, and who answers.

A server may ask the client's model for a completion (`sampling/createMessage`) or ask the
user to fill in a form (`elicitation/create`). A session answers (`ServerRequests`; ours is
`agent.loop.server_requests.RequestAnswerer`: the approval policy, the model as a plain
`Sampler`, and `Questions`: whoever can ask the user, the terminal or the resident service's
client). `TurnRouter` lets servers shared between sessions (the service's pool) reach the
session whose turn is running.

Light: imports neither the MCP SDK nor the model stack (the service's client uses it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

# (messages as {"role", "content"} text, max tokens, system prompt) -> the model's text.
Sampler = Callable[[list[dict[str, str]], int, str | None], str]
Ask = Callable[[str, dict[str, Any]], str]  # shows a request, returns "y", "n" or "a" (always)
Notify = Callable[[str, str], None]  # (kind, message): a `notice` event of the running turn


class RequestRefused(Exception):
    """A server's request is not answered; the message (one line) says why, and the server
    gets it as the request's error."""


@dataclass(frozen=True)
class SamplingRequest:
    """A server's request for a completion by our model."""

    server: str
    messages: list[dict[str, str]]  # {"role": "user" | "assistant", "content": text}
    max_tokens: int
    system_prompt: str | None = None


@dataclass(frozen=True)
class Sampled:
    """The completion sent back: the model's text, and the model's name."""

    text: str
    model: str


@dataclass(frozen=True)
class ElicitationRequest:
    """A server's question for the user: a message and the form to fill in (a JSON schema of
    flat properties: strings, numbers, booleans, enums), or a URL to open."""

    server: str
    message: str
    schema: dict[str, Any] = field(default_factory=dict)
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "message": self.message,
            "schema": self.schema,
            "url": self.url,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ElicitationRequest:
        return cls(
            server=str(data.get("server", "")),
            message=str(data.get("message", "")),
            schema=dict(data.get("schema") or {}),
            url=str(data["url"]) if data.get("url") else None,
        )


@dataclass(frozen=True)
class Elicited:
    """The user's answer: `accept` (with the form's values), `decline` or `cancel`."""

    action: str
    content: dict[str, Any] | None = None


Elicit = Callable[[ElicitationRequest], Elicited]  # raises RequestRefused when nobody can answer


@dataclass(frozen=True)
class Questions:
    """Who answers, during a run, what a server asks: approval of its sampling requests
    (shown as a call to `<server>-sampling`) and its forms."""

    approve: Ask  # raises RequestRefused when nobody can be asked
    elicit: Elicit


class ServerRequests(Protocol):
    """Answers a server's requests (called in a worker thread, never on the MCP loop)."""

    def sample(self, request: SamplingRequest) -> Sampled: ...

    def elicit(self, request: ElicitationRequest) -> Elicited: ...


class TurnRouter:
    """Answers for the session whose turn is running (`serving`); refuses between turns.

    The resident service's MCP servers are shared by its sessions and it runs one turn at a
    time, so one slot is enough."""

    def __init__(self) -> None:
        self._current: ServerRequests | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def serving(self, answerer: ServerRequests) -> Iterator[None]:
        """Route requests to `answerer` while the block runs."""
        with self._lock:
            before, self._current = self._current, answerer
        try:
            yield
        finally:
            with self._lock:
                self._current = before

    def _answerer(self) -> ServerRequests:
        with self._lock:
            current = self._current
        if current is None:
            raise RequestRefused("no run is going, so there is no model or user to answer")
        return current

    def sample(self, request: SamplingRequest) -> Sampled:
        return self._answerer().sample(request)

    def elicit(self, request: ElicitationRequest) -> Elicited:
        return self._answerer().elicit(request)
