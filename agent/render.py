"""Event renderers: a human terminal view (rich) and JSON Lines for machines.

Untrusted text (from the model, a tool, a web page, a file) is passed through `visible()`
before it reaches a terminal: control characters are shown, never executed. JSON Lines keep
the exact text (JSON escapes it).
"""

from __future__ import annotations

import json
import sys
from typing import IO, Protocol

from rich.console import Console
from rich.text import Text as RichText

from agent import events as ev

RESULT_PREVIEW_CHARS = 300
_KEPT = {"\n", "\t"}
# Bidirectional overrides and isolates reorder what the terminal shows ("Trojan source").
_BIDI = {*map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def _visible_char(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: ESC is shown as ␛, BEL as ␇
    if code == 0x7F:
        return "\u2421"  # ␡
    return f"\\x{code:02x}" if code < 0xA0 else f"\\u{code:04x}"  # C1 controls, bidi


def visible(text: str) -> str:
    """`text` with every control character (but newline and tab) made visible: a terminal
    shows it and executes nothing (no escape sequences, bells, carriage returns, C1 codes or
    bidirectional overrides)."""
    return "".join(
        _visible_char(c)
        if c not in _KEPT and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in _BIDI)
        else c
        for c in text
    )


class Renderer(Protocol):
    """Shows one event as it happens."""

    def show(self, event: ev.Event) -> None: ...


class Tee:
    """Shows each event to every renderer in turn (e.g. the run history, then the terminal)."""

    def __init__(self, *renderers: Renderer) -> None:
        self.renderers = renderers

    def show(self, event: ev.Event) -> None:
        for renderer in self.renderers:
            renderer.show(event)


class JsonLinesRenderer:
    """One JSON object per line on stdout, flushed at once, nothing else."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out or sys.stdout

    def show(self, event: ev.Event) -> None:
        self._out.write(event.to_json() + "\n")
        self._out.flush()


def _shorten(text: str, limit: int = RESULT_PREVIEW_CHARS) -> str:
    flat = " ".join(visible(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class TerminalRenderer:
    """Answer text on stdout; tool activity, thinking and status lines on stderr."""

    def __init__(
        self, show_thinking: bool, out: Console | None = None, err: Console | None = None
    ) -> None:
        self.show_thinking = show_thinking
        self.out = out or Console(highlight=False, soft_wrap=True, emoji=False)
        self.err = err or Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
        self._open: str | None = None  # the stream a line is open on: "text" or "thinking"
        self._streamed_text = ""

    def _close_line(self) -> None:
        if self._open == "text":
            self.out.print()
        elif self._open == "thinking":
            self.err.print()
        self._open = None

    def show(self, event: ev.Event) -> None:
        handler = getattr(self, f"_{event.type}", None)
        if handler:
            handler(event)

    def _run_started(self, event: ev.RunStarted) -> None:
        tools = ", ".join(event.tools) or "none"
        header = f"{event.model} ({event.backend}) · tools: {tools}"
        if event.sandbox:
            header += f" · {event.sandbox}"
        self.err.print(RichText(visible(header), style="dim"))

    def _thinking(self, event: ev.Thinking) -> None:
        if not self.show_thinking:
            return
        if self._open != "thinking":
            self._close_line()
            self.err.print(RichText("thinking: ", style="dim bold"), end="")
            self._open = "thinking"
        self.err.print(RichText(visible(event.delta), style="dim italic"), end="")

    def _text(self, event: ev.Text) -> None:
        if self._open != "text":
            self._close_line()
            self._open = "text"
        self._streamed_text += event.delta
        self.out.print(RichText(visible(event.delta)), end="")

    def _tool_call(self, event: ev.ToolCall) -> None:
        self._close_line()
        self._streamed_text = ""
        args = visible(json.dumps(event.arguments, ensure_ascii=False))
        name = visible(event.name)
        self.err.print(RichText.assemble(("→ ", "cyan"), (name, "bold cyan"), f" {args}"))

    def _tool_result(self, event: ev.ToolResult) -> None:
        self._close_line()
        took = f" {event.duration_s:.1f}s" if event.duration_s is not None else ""
        mark, style = ("←", "green") if event.ok else ("✗", "red")
        label = RichText.assemble((f"{mark} {visible(event.name)}{took} ", style))
        label.append(_shorten(event.content), style="" if event.ok else "red")
        self.err.print(label)

    def _answer(self, event: ev.Answer) -> None:
        if not self._streamed_text.strip():
            self._close_line()
            self.out.print(RichText(visible(event.text)))
            self._open = None
        else:
            self._close_line()

    def _notice(self, event: ev.Notice) -> None:
        self._close_line()
        self.err.print(RichText(f"notice: {visible(event.message)}", style="yellow"))

    def _error(self, event: ev.Error) -> None:
        self._close_line()
        self.err.print(RichText(f"error: {visible(event.message)}", style="bold red"))

    def _run_finished(self, event: ev.RunFinished) -> None:
        self._close_line()
        parts = [f"{event.status} in {event.timings.get('total_s', 0):.1f}s"]
        if event.usage:
            parts.append(
                f"{event.usage.get('llm_calls', 0)} model calls, "
                f"{event.usage.get('prompt_tokens', 0)} prompt / "
                f"{event.usage.get('completion_tokens', 0)} generated tokens"
            )
        if event.context:
            parts.append(f"context {event.context.get('percent', 0)} %")
        self.err.print(RichText(" · ".join(parts), style="dim"))
