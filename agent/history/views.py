"""What the history commands show: a run re-rendered from its events, exports, `--since`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime
from typing import Any

from agent.errors import ConfigError
from agent.events import event_from_dict
from agent.history.store import History, RunRecord
from agent.render import Renderer, visible

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> float:
    """`30m`, `2h`, `7d`, `1w` ago, or an ISO date or time (`2026-12-01`, `2026-12-01T08:00`)."""
    now = time.time() if now is None else now
    if match := _DURATION.match(text.strip()):
        return now - int(match[1]) * _SECONDS[match[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ConfigError(
            f"--since {text!r}: give a duration (30m, 2h, 7d, 1w) or a date (2026-12-01)"
        ) from None


def replay(history: History, run: RunRecord, renderer: Renderer) -> None:
    """Show a stored run through `renderer`, event by event, as it was shown live."""
    for data in history.events(run.id):
        renderer.show(event_from_dict(data))


def record_json(run: RunRecord) -> dict[str, Any]:
    """A run as one `--json` line (id first)."""
    return asdict(run)


def export_json(history: History, runs: Iterable[RunRecord]) -> str:
    """Runs with their events, as one JSON document."""
    exported = [{**asdict(run), "events": list(history.events(run.id))} for run in runs]
    return json.dumps({"runs": exported}, ensure_ascii=False, indent=1) + "\n"


def export_markdown(history: History, runs: Iterable[RunRecord]) -> str:
    """Runs as a Markdown transcript: the prompt, tool calls and results, the answer."""
    lines: list[str] = []
    for run in runs:
        stamp = datetime.fromtimestamp(run.started_at).strftime("%Y-%m-%d %H:%M:%S")
        lines += [f"## Turn {run.turn} · {run.id} · {stamp} · {run.status}", ""]
        lines += ["**User:**", "", _quoted(run.prompt), ""]
        for data in history.events(run.id):
            if data["type"] == "tool_call":
                arguments = json.dumps(data["arguments"], ensure_ascii=False)
                lines += [f"**Tool call** `{data['name']}`: `{arguments}`", ""]
            elif data["type"] == "tool_result":
                mark = "result" if data["ok"] else "error"
                lines += [f"**Tool {mark}** `{data['name']}`:", "", _fenced(data["content"]), ""]
            elif data["type"] in ("notice", "error"):
                lines += [f"*{data['type']}: {data['message']}*", ""]
            elif data["type"] == "answer":
                lines += ["**Answer:**", "", data["text"], ""]
    return visible("\n".join(lines))


def _quoted(text: str) -> str:
    return "\n".join(f"> {line}" for line in text.splitlines())


def _fenced(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text}\n{fence}"
