"""Split Qwen3's generated text into OpenAI chat-completion deltas: reasoning, content, tool calls.

One state machine serves both kinds of response: a streamed one sends the deltas of
`OutputSplitter` as they come, a non-streamed one is `Completion` accumulating the same deltas
(`split_all`), so the two are equal by construction, whatever the chunking. A suffix that may be
the start of a tag is held back until the next piece decides it, so no `<think>`, `</think>`,
`<tool_call>` or `</tool_call>` text ever reaches content or reasoning.

Tool-call arguments in the plain Hermes shape (`{"name": "...", "arguments": {...}}`) are streamed
character by character, as valid JSON: small slips (raw control characters in strings, trailing
commas, Python's `True`/`False`/`None`) are repaired on the way, and a value cut off is closed.
Any other shape is parsed leniently by `agent.loop.call_parser` once the call is complete.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from agent.loop.call_text import CALL_CLOSE, CALL_OPEN, THINK_CLOSE, THINK_OPEN, parse_call_body

REASONING = "reasoning"
CONTENT = "content"
TOOL_CALL = "tool_call"

_TEXT_TAGS = (THINK_OPEN, THINK_CLOSE, CALL_OPEN, CALL_CLOSE)
_CALL_TAGS = (CALL_OPEN, CALL_CLOSE)
_WHITESPACE = " \t\r\n"


def new_call_id() -> str:
    """A fresh OpenAI-style tool-call id: `call_` and 24 hex characters."""
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class Delta:
    """One piece of a chat-completion response.

    `kind` is "reasoning", "content" or "tool_call". For a tool call, the first delta carries
    `index`, `call_id` and `name` with empty `text`; later ones carry fragments of the arguments.
    """

    kind: str
    text: str = ""
    index: int = 0
    call_id: str | None = None
    name: str | None = None


@dataclass
class ToolCallOut:
    """A tool call of a finished response; `arguments` is JSON text."""

    id: str
    name: str
    arguments: str = ""


@dataclass
class Completion:
    """A whole response, made by accumulating deltas (the non-streamed response)."""

    reasoning: str = ""
    content: str = ""
    tool_calls: list[ToolCallOut] = field(default_factory=list)

    def add(self, delta: Delta) -> None:
        """Add one delta, as a streaming client would."""
        if delta.kind == REASONING:
            self.reasoning += delta.text
        elif delta.kind == CONTENT:
            self.content += delta.text
        elif delta.name is not None:
            self.tool_calls.append(ToolCallOut(delta.call_id or "", delta.name, delta.text))
        else:
            self.tool_calls[delta.index].arguments += delta.text


def split_all(text: str, new_call_id: Callable[[], str] = new_call_id) -> Completion:
    """The response for a whole generated text: feed it at once, then finish."""
    splitter = OutputSplitter(new_call_id)
    completion = Completion()
    for delta in splitter.feed(text) + splitter.finish():
        completion.add(delta)
    return completion


# --- Arguments, streamed as valid JSON ----------------------------------------------------------

_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _AFTER = range(6)
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_PYTHON_LITERALS = {"True": "true", "False": "false", "None": "null"}
_ESCAPES = '"\\/bfnrt'
_HEX = "0123456789abcdefABCDEF"


class _ArgumentsStream:
    """One JSON value read character by character; what `push` returns is always a prefix of
    valid JSON, and `close` completes it. Numbers, literals, escapes and a comma (which a closing
    bracket may make a trailing comma, dropped) are held until they are decided."""

    def __init__(self) -> None:
        self.stack: list[str] = []  # the closing brackets still owed
        self.expect = _VALUE
        self.in_string = self.in_key = False
        self.escape = ""  # an escape sequence being read
        self.atom = ""  # a number or literal being read
        self.held = ""  # a comma and the whitespace after it
        self.done = self.repaired = False

    def push(self, char: str) -> str:
        """Read one character; the JSON text it decides."""
        if self.done:
            return ""
        if self.in_string:
            return self._string_char(char)
        out = ""
        if self.atom:
            if char.isalnum() or char in "+-.":
                self.atom += char
                return ""
            atom = self._end_atom()
            if atom is None:
                return self._fail()
            out = atom
        if char in _WHITESPACE:
            if self.held:
                self.held += char
                return out
            return out + char
        if self.held:
            if char in "]}":
                out, self.expect, self.repaired = out + self.held[1:], _AFTER, True
            else:
                out += self.held
            self.held = ""
        token = self._token(char)
        return out + (self._fail() if token is None else token)

    def close(self) -> str:
        """The text that completes what was read into valid JSON ("" once done)."""
        if self.done:
            return ""
        out = ""
        if self.in_string:
            self.escape, self.in_string = "", False
            out += '"'
            self.expect = _COLON if self.in_key else _AFTER
        if self.atom:
            out += self._end_atom() or ""
        if self.held:
            self.held, self.expect = "", _AFTER
        if self.expect == _COLON:
            out += ": null"
        elif self.expect == _VALUE:
            out += "null" if self.stack else "{}"
        out += "".join(reversed(self.stack))
        self.stack.clear()
        self.done = self.repaired = True
        return out

    def _fail(self) -> str:
        """Stop at something that is not JSON: close what is open; the rest is ignored."""
        return self.close()

    def _token(self, char: str) -> str | None:
        """A structural character or the start of a value; None when it cannot come here."""
        expect = self.expect
        if expect == _AFTER:
            if char == "," and self.stack:
                self.held = ","
                self.expect = _KEY if self.stack[-1] == "}" else _VALUE
                return ""
            return self._close_bracket() if self.stack and char == self.stack[-1] else None
        if expect == _COLON:
            if char != ":":
                return None
            self.expect = _VALUE
            return ":"
        if expect in (_KEY, _KEY_OR_CLOSE):
            if char == "}" and expect == _KEY_OR_CLOSE:
                return self._close_bracket()
            if char != '"':
                return None
            self.in_string = self.in_key = True
            return '"'
        if char == "]" and expect == _VALUE_OR_CLOSE:
            return self._close_bracket()
        return self._start_value(char)

    def _start_value(self, char: str) -> str | None:
        if char in "{[":
            self.stack.append("}" if char == "{" else "]")
            self.expect = _KEY_OR_CLOSE if char == "{" else _VALUE_OR_CLOSE
            return char
        if char == '"':
            self.in_string, self.in_key = True, False
            return '"'
        if char == "-" or char.isalnum():
            self.atom = char
            return ""
        return None

    def _close_bracket(self) -> str:
        closing = self.stack.pop()
        self.expect = _AFTER
        self.done = not self.stack
        return closing

    def _end_atom(self) -> str | None:
        """The finished number or literal as JSON; None when it is neither."""
        atom, self.atom = self.atom, ""
        if atom in _PYTHON_LITERALS:
            atom, self.repaired = _PYTHON_LITERALS[atom], True
        elif atom not in ("true", "false", "null") and not _NUMBER.fullmatch(atom):
            return None
        self.expect = _AFTER
        return atom

    def _string_char(self, char: str) -> str:
        if self.escape:
            return self._escape_char(char)
        if char == "\\":
            self.escape = char
            return ""
        if char == '"':
            self.in_string = False
            self.expect = _COLON if self.in_key else _AFTER
            return char
        if char < " ":  # a raw control character (a newline, most often)
            self.repaired = True
            return json.dumps(char)[1:-1]
        return char

    def _escape_char(self, char: str) -> str:
        self.escape += char
        sequence = self.escape
        if len(sequence) == 2 and char == "u":
            return ""
        if (len(sequence) == 2 and char in _ESCAPES) or (len(sequence) > 2 and char in _HEX):
            if len(sequence) in (3, 4, 5):  # inside `\uXXXX`
                return ""
            self.escape = ""
            return sequence
        # Not an escape: the backslash was meant literally.
        self.escape, self.repaired = "", True
        return "\\\\" + "".join(self._string_char(c) for c in sequence[1:])


# --- The head of a call: `{"name": "...", "arguments": ` ----------------------------------------

_NAME = object()
_HEAD = ("{", '"name"', ":", _NAME, ",", '"arguments"', ":")
_NAME_STRING = re.compile(r'"([^"\\\n]*)"')
_NAME_PREFIX = re.compile(r'(?:"[^"\\\n]*)?')
_Pending = Literal["pending", "no"]


@dataclass(frozen=True)
class _Head:
    name: str
    end: int  # where the arguments object opens


def _skip_whitespace(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _match_head(body: str) -> _Head | _Pending:
    """The name of a call in the plain shape once its arguments object opens; "pending" while
    `body` may still become one, "no" when it cannot."""
    pos, name = 0, ""
    for token in _HEAD:
        pos = _skip_whitespace(body, pos)
        rest = body[pos:]
        if token is _NAME:
            match = _NAME_STRING.match(body, pos)
            if match:
                pos, name = match.end(), match.group(1)
                continue
            return "pending" if _NAME_PREFIX.fullmatch(rest) else "no"
        assert isinstance(token, str)
        if rest.startswith(token):
            pos += len(token)
            continue
        return "pending" if token.startswith(rest) else "no"
    pos = _skip_whitespace(body, pos)
    if pos == len(body):
        return "pending"
    return _Head(name, pos) if body[pos] == "{" and name else "no"


# --- The splitter -------------------------------------------------------------------------------

_PLAIN_TRAILER = re.compile(r"\s*\}\s*")


@dataclass
class _Call:
    """The call being read: its body until the head matches, then its arguments stream."""

    body: str = ""
    arguments: _ArgumentsStream | None = None
    trailer: str = ""  # what follows the arguments value


class OutputSplitter:
    """Qwen3's generated text in, chat-completion deltas out; feed it any chunking of the text.

    Counters for /metrics: `repaired_calls` (calls not in the plain shape, repaired),
    `held_tag_text` (chunk boundaries at which a partial tag was held back) and
    `unparsed_calls` (call bodies nothing could parse; dropped, never shown as content).
    """

    def __init__(self, new_call_id: Callable[[], str] = new_call_id, calls: bool = True) -> None:
        """With `calls` off (a request without tools), tool-call tags are text: the client
        reads calls from the text itself, as Qwen-Agent's own `oai` backend does."""
        self._new_call_id = new_call_id
        self._text_tags = _TEXT_TAGS if calls else (THINK_OPEN, THINK_CLOSE)
        self.repaired_calls = 0
        self.held_tag_text = 0
        self.unparsed_calls = 0
        self._buffer = ""
        self._kind = CONTENT  # CONTENT, REASONING or TOOL_CALL: where text goes now
        self._started = False  # whether the current text run has shown anything
        self._spaces = ""  # whitespace held at either end of the current text run
        self._gaps: dict[str, str] = {}  # per kind shown: the whitespace after its last run
        self._call = _Call()
        self._calls = 0
        self._out: list[Delta] = []

    def feed(self, piece: str) -> list[Delta]:
        """The deltas that `piece` decides; text that may be a partial tag is held back."""
        self._buffer += piece
        self._run(final=False)
        if self._buffer:
            self.held_tag_text += 1
        return self._take()

    def finish(self) -> list[Delta]:
        """End of generation: the deltas of everything still held."""
        self._run(final=True)
        self._end_text()
        if self._kind == TOOL_CALL:
            self._end_call()
            self._kind = CONTENT
        return self._take()

    def _take(self) -> list[Delta]:
        out, self._out = self._out, []
        return out

    def _run(self, final: bool) -> None:
        tags = _CALL_TAGS if self._kind == TOOL_CALL else self._text_tags
        while self._buffer:
            found = [(at, tag) for tag in tags if (at := self._buffer.find(tag)) >= 0]
            if not found:
                cut = len(self._buffer) if final else _hold_point(self._buffer, tags)
                self._text(self._buffer[:cut])
                self._buffer = self._buffer[cut:]
                return
            at, tag = min(found)
            self._text(self._buffer[:at])
            self._buffer = self._buffer[at + len(tag) :]
            self._tag(tag)
            tags = _CALL_TAGS if self._kind == TOOL_CALL else self._text_tags

    def _tag(self, tag: str) -> None:
        if self._kind == TOOL_CALL:
            self._end_call()
        else:
            self._end_text()
        if tag == CALL_OPEN:
            self._kind, self._call = TOOL_CALL, _Call()
        elif tag == THINK_OPEN:
            self._kind = REASONING
        elif tag == THINK_CLOSE or self._kind == TOOL_CALL:
            self._kind = CONTENT
        # A stray `</tool_call>` in text is dropped.

    def _text(self, text: str) -> None:
        """Reasoning or content, with whitespace at the ends of a run held: the first run of a
        kind is stripped, later ones join it with the whitespace that separated them."""
        if self._kind == TOOL_CALL:
            self._call_text(text)
            return
        body = text.strip()
        if not body:
            self._spaces += text
            return
        spaces = self._spaces + text[: len(text) - len(text.lstrip())]
        if not self._started:
            gap = self._gaps.get(self._kind)
            spaces = "" if gap is None else gap or spaces
        self._emit(Delta(self._kind, spaces + body))
        self._started, self._spaces = True, text[len(text.rstrip()) :]

    def _end_text(self) -> None:
        """End a run of reasoning or content; the whitespace at its end is kept as its gap."""
        if self._started:
            self._gaps[self._kind] = self._spaces
        self._started, self._spaces = False, ""

    def _call_text(self, text: str) -> None:
        call = self._call
        if call.arguments is None:
            call.body += text
            head = _match_head(call.body)
            if not isinstance(head, _Head):
                return
            self._start_call(head.name)
            call.arguments = _ArgumentsStream()
            text = call.body[head.end :]
        arguments = call.arguments
        if arguments.done:
            call.trailer += text
            return
        fragment = ""
        for at, char in enumerate(text):
            fragment += arguments.push(char)
            if arguments.done:
                call.trailer += text[at + 1 :]
                break
        self._fragment(fragment)

    def _end_call(self) -> None:
        call = self._call
        if call.arguments is None:
            self._end_unstreamed_call(call.body)
            return
        self._fragment(call.arguments.close())
        if call.arguments.repaired or not _PLAIN_TRAILER.fullmatch(call.trailer):
            self.repaired_calls += 1

    def _end_unstreamed_call(self, body: str) -> None:
        """A call not in the plain shape: parsed leniently, whole, or dropped."""
        parsed = parse_call_body(body) if body.strip() else None
        if parsed is None or not parsed.name or not isinstance(parsed.arguments, dict):
            self.unparsed_calls += 1
            return
        self._start_call(parsed.name)
        self._fragment(json.dumps(parsed.arguments, ensure_ascii=False))
        self.repaired_calls += 1

    def _start_call(self, name: str) -> None:
        self._out.append(Delta(TOOL_CALL, "", self._calls, self._new_call_id(), name))
        self._calls += 1

    def _fragment(self, text: str) -> None:
        self._emit(Delta(TOOL_CALL, text, self._calls - 1))

    def _emit(self, delta: Delta) -> None:
        """Add a delta, merged into the last one when it continues it; empty ones are dropped."""
        if not delta.text:
            return
        last = self._out[-1] if self._out else None
        if last and last.kind == delta.kind and last.index == delta.index and not last.name:
            self._out[-1] = Delta(delta.kind, last.text + delta.text, delta.index)
        else:
            self._out.append(delta)


def _hold_point(text: str, tags: tuple[str, ...]) -> int:
    """Where the suffix of `text` that may be the start of one of `tags` begins."""
    longest = max(len(tag) for tag in tags)
    for at in range(max(0, len(text) - longest + 1), len(text)):
        rest = text[at:]
        if any(tag.startswith(rest) for tag in tags):
            return at
    return len(text)
