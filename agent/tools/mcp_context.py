"""What MCP prompts and resources add to a user's turn.

A user names them: `server/prompt` with `key=value` arguments (`agent run --prompt-from`,
`/prompt` in chat), `server:uri` (`agent run --attach`) or `@server:uri` anywhere in a chat
message. The server renders the prompt (its messages: user and assistant text) and reads the
resource; here they become the turn the model gets: text resources as text under a header
naming them, binary ones as a short note (type and size, never the bytes), each cut at
`resource_limit` characters with the cut said in the message and in a notice.

Light: no MCP SDK here (the service's client uses it); the sessions do the reading.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agent.errors import MCPReferenceError

# `@server:uri` after a space or at the start; `@bob: hi` (a space after the colon) is not one.
MENTION = re.compile(r"(?<!\S)@([A-Za-z0-9_.-]+):(\S+)")
TRAILING_PUNCTUATION = ".,;:!?)]}'\""


@dataclass(frozen=True)
class ResourceContent:
    """One content item of a resource: its text, or for binary data only its size."""

    uri: str
    mime_type: str | None
    text: str | None  # None: binary
    size: int  # characters of text, bytes of binary

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResourceContent:
        text = data.get("text")
        return cls(
            uri=str(data.get("uri", "")),
            mime_type=str(data["mime_type"]) if data.get("mime_type") else None,
            text=str(text) if text is not None else None,
            size=int(data.get("size", 0)),
        )


@dataclass(frozen=True)
class UserTurn:
    """What the user sends: `text` as the turn's user message, after `context` (a prompt's
    earlier messages); `notices` are shown with the run (a resource that was cut)."""

    text: str
    context: list[dict[str, str]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


class MCPReader(Protocol):
    """Where prompts are rendered and resources read: a session's MCP servers."""

    def get_prompt(
        self, server: str, name: str, arguments: dict[str, str]
    ) -> list[dict[str, str]]: ...

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]: ...


# --- references ------------------------------------------------------------------------------


def parse_prompt_ref(ref: str) -> tuple[str, str]:
    """`server/name` as (server, name)."""
    server, slash, name = ref.strip().partition("/")
    if not (server and slash and name):
        raise MCPReferenceError(
            f"{ref!r} is not a prompt reference; write SERVER/PROMPT, e.g. notes/summarize "
            "(agent tools list shows the prompts)"
        )
    return server, name


def parse_prompt_arguments(pairs: Iterable[str]) -> dict[str, str]:
    """`key=value` items as a dict (the value may hold `=` and spaces)."""
    arguments: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not (key.strip() and equals):
            raise MCPReferenceError(f"prompt argument {pair!r} is not KEY=VALUE, e.g. topic=cats")
        arguments[key.strip()] = value
    return arguments


def parse_resource_ref(ref: str) -> tuple[str, str]:
    """`server:uri` as (server, uri)."""
    server, colon, uri = ref.strip().partition(":")
    if not (server and colon and uri) or "/" in server:
        raise MCPReferenceError(
            f"{ref!r} is not a resource reference; write SERVER:URI, e.g. "
            "notes:notes://today (agent tools list shows the resources)"
        )
    return server, uri


def mentions(text: str) -> list[tuple[str, str]]:
    """The `@server:uri` references in a message, in order, each once."""
    found: list[tuple[str, str]] = []
    for match in MENTION.finditer(text):
        reference = (match.group(1), match.group(2).rstrip(TRAILING_PUNCTUATION))
        if reference[1] and reference not in found:
            found.append(reference)
    return found


# --- turns -----------------------------------------------------------------------------------


def prompt_turn(reader: MCPReader, ref: str, arguments: dict[str, str]) -> UserTurn:
    """The turn a server's prompt makes: its last user message is the turn's text, the
    messages before it its context."""
    server, name = parse_prompt_ref(ref)
    messages = reader.get_prompt(server, name, arguments)
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if not users:
        raise MCPReferenceError(f"prompt {ref} has no user message to send")
    if users[-1] != len(messages) - 1:
        raise MCPReferenceError(
            f"prompt {ref} ends with an assistant message; only a prompt that ends with the "
            "user's message can start a turn"
        )
    return UserTurn(text=messages[-1]["content"], context=messages[:-1])


def with_attachments(
    reader: MCPReader, turn: UserTurn, references: Iterable[tuple[str, str]], limit: int
) -> UserTurn:
    """`turn` with each resource read and added to its text (cut at `limit` characters)."""
    blocks: list[str] = []
    notices = list(turn.notices)
    for server, uri in references:
        block, notice = resource_block(server, uri, reader.read_resource(server, uri), limit)
        blocks.append(block)
        if notice:
            notices.append(notice)
    if not blocks:
        return turn
    text = "\n\n".join([turn.text, *blocks]) if turn.text else "\n\n".join(blocks)
    return UserTurn(text=text, context=turn.context, notices=notices)


def resource_block(
    server: str, uri: str, contents: list[ResourceContent], limit: int | None
) -> tuple[str, str | None]:
    """A resource as message text, and a notice when it was cut: a header naming it, then
    its text; binary content as a note of its type and size."""
    texts = [item.text for item in contents if item.text is not None]
    notes = [
        f"[binary content of {item.uri}: {item.mime_type or 'unknown type'}, {item.size:,} "
        "bytes, not included]"
        for item in contents
        if item.text is None
    ]
    types = sorted({item.mime_type for item in contents if item.mime_type})
    header = f"[resource {uri} from MCP server {server}" + (
        f", {', '.join(types)}]" if types else "]"
    )
    body = "\n".join(texts)
    notice = None
    if limit is not None and len(body) > limit:
        notice = (
            f"resource {server}:{uri} was cut to its first {limit:,} of {len(body):,} characters "
            "(resource_limit)"
        )
        body = body[:limit] + f"\n[cut: the first {limit:,} of {len(body):,} characters are shown]"
    parts = [header, *([body] if texts else []), *notes]
    if not contents:
        parts.append("[empty]")
    return "\n".join(parts), notice
