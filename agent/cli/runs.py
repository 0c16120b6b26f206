"""`agent runs list|show|delete|export`: the run history (and, from agent.cli.rerun, `steps`,
`fork`, `resume`, `replay`)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from agent.cli import rerun
from agent.cli.common import EXIT_OK
from agent.cli.options import json_option
from agent.config import load_settings
from agent.errors import ConfigError
from agent.history.store import History, RunRecord
from agent.history.views import export_json, export_markdown, parse_since, record_json, replay
from agent.paths import write_atomically
from agent.render import JsonLinesRenderer, TerminalRenderer, visible


def _history() -> History:
    return History(load_settings().history)


@click.group("runs")
def runs() -> None:
    """The run history: list, search, show, delete, export; steps, fork, resume, replay."""


@runs.command("list")
@click.option("--limit", type=int, default=20, show_default=True, help="at most N runs")
@click.option("--status", help="answered, no_answer, error, cancelled, interrupted, running")
@click.option(
    "--search", metavar="TEXT", help="runs whose prompt, answer, tool calls or results say TEXT"
)
@click.option("--since", metavar="WHEN", help="runs started since: 30m, 2h, 7d, or a date")
@click.option("--tool", metavar="NAME", help="runs that called this tool")
@json_option("one JSON object per run, id first")
def list_runs(
    limit: int,
    status: str | None,
    search: str | None,
    since: str | None,
    tool: str | None,
    as_json: bool,
) -> int:
    """The newest runs, grouped by conversation."""
    if limit < 1:
        raise ConfigError("--limit must be >= 1")
    after = parse_since(since) if since else None
    with _history() as history:
        found = history.runs(limit=limit, status=status, search=search, since=after, tool=tool)
    if as_json:
        for run in found:
            print(json.dumps(record_json(run), ensure_ascii=False))
        return EXIT_OK
    for conversation, members in _grouped(found):
        print(f"{conversation}")
        for run in members:
            print(visible(_line(run)))
    return EXIT_OK


def _grouped(found: list[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    groups: dict[str, list[RunRecord]] = {}
    for run in found:
        groups.setdefault(run.conversation_id, []).append(run)
    return [(key, sorted(members, key=lambda r: r.turn)) for key, members in groups.items()]


def _line(run: RunRecord) -> str:
    stamp = datetime.fromtimestamp(run.started_at).strftime("%Y-%m-%d %H:%M")
    prompt = " ".join(run.prompt.split())
    prompt = prompt if len(prompt) <= 60 else prompt[:59] + "…"
    origin = f"({run.origin}) " if run.origin else ""
    return f"  {run.id}  {stamp}  {run.status:<11} {origin}{prompt}"


@runs.command("show")
@click.argument("run_id", metavar="ID")
@json_option("print the stored events as JSON Lines")
def show(run_id: str, as_json: bool) -> int:
    """A run (or every run of a conversation) as it looked live."""
    with _history() as history:
        for run in history.selected_runs(run_id):
            settings = history.run_settings(run.id)
            renderer: Any = (
                JsonLinesRenderer()
                if as_json
                else TerminalRenderer(bool(settings.get("show_thinking")))
            )
            if not as_json and run.origin:
                print(_origin(run))
            chat = history.conversation_kind(run.conversation_id) == "chat"
            if not as_json and chat and not run.continues:
                print(visible(f"› {run.prompt}"))
            replay(history, run, renderer)
    return EXIT_OK


def _origin(run: RunRecord) -> str:
    """Where a forked or resumed run came from, in words."""
    if run.origin == "fork":
        where = f"before step {run.origin_step}" if run.origin_step else "from its end"
        return f"(fork of run {run.origin_run}, {where})"
    return f"({run.origin} of run {run.origin_run})"


@runs.command("delete")
@click.argument("run_id", metavar="ID")
def delete(run_id: str) -> int:
    """Delete a run, or a whole conversation (and their events)."""
    with _history() as history:
        print(f"deleted {history.delete(run_id)}")
    return EXIT_OK


@runs.command("export")
@click.argument("run_id", metavar="ID")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "json"]),
    default="markdown",
    show_default=True,
)
@click.option("--out", type=click.Path(path_type=Path), metavar="FILE", help="write it there")
def export(run_id: str, fmt: str, out: Path | None) -> int:
    """A run or conversation as Markdown or JSON."""
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out: directory {out.parent} does not exist")
    with _history() as history:
        chosen = history.selected_runs(run_id)
        text = (export_markdown if fmt == "markdown" else export_json)(history, chosen)
    if out is None:
        print(text, end="")
    else:
        write_atomically(out, text)
    return EXIT_OK


for command in (rerun.list_steps, rerun.fork, rerun.resume, rerun.replay):
    runs.add_command(command)
