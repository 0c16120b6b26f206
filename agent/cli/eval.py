"""`agent eval bfcl`: the model on a benchmark."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from agent.cli.common import EXIT_OK, setup_logging
from agent.cli.options import json_option, model_options, names, settings_from
from agent.errors import ConfigError
from agent.paths import write_atomically


@click.group("eval")
def evaluate() -> None:
    """Measure the model on a benchmark."""


@evaluate.command("bfcl")
@click.option(
    "--categories",
    callback=names,
    metavar="NAME,NAME",
    help="simple, multiple, parallel, parallel_multiple, irrelevance (default: all five)",
)
@click.option("--limit", type=int, metavar="N", help="only the first N of each category")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="write scores and entries as JSON",
)
@json_option("one JSON object per entry, then scores")
@model_options
def bfcl(
    categories: tuple[str, ...] | None,
    limit: int | None,
    out: Path | None,
    as_json: bool,
    **flags: Any,
) -> int:
    """BFCL single-turn function calling (simple, multiple, parallel, ...).

    Prints a score table (or JSON Lines); `--out` writes a JSON report.
    """
    from agent.eval.bfcl import report, run_entries, summarize
    from agent.eval.bfcl_data import CATEGORIES, load_entries
    from agent.loop.assistant import build_llm

    if limit is not None and limit < 1:
        raise ConfigError("--limit must be >= 1")
    if out is not None and not out.parent.is_dir():
        raise ConfigError(f"--out: directory {out.parent} does not exist")
    try:
        entries = load_entries(categories or CATEGORIES, limit)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = settings_from(flags)
    setup_logging(settings.debug)
    llm = build_llm(settings)
    results = []
    for result in run_entries(llm, entries, settings.require_tool):
        results.append(result)
        if as_json:
            print(json.dumps({"type": "entry", **asdict(result)}, ensure_ascii=False), flush=True)
        else:
            mark = "ok  " if result.ok else "miss"
            print(f"{mark} {result.id} {result.latency_s:.1f}s {result.reason}", file=sys.stderr)
    scores = summarize(results)
    if out is not None:
        write_atomically(out, json.dumps(report(scores, results), indent=1) + "\n")
    if as_json:
        for score in scores:
            print(json.dumps({"type": "score", **asdict(score)}), flush=True)
    else:
        _print_scores(scores)
    return EXIT_OK


def _print_scores(scores: list[Any]) -> None:
    """The score table: strict/parsed/valid are shares of the tool calls made."""
    from rich.console import Console
    from rich.table import Table

    table = Table("category", "entries", "accuracy", "strict", "parsed", "valid", box=None)
    table.add_column("calls")
    table.add_column("s/entry")
    for s in scores:
        shares = (s.strict_parse, s.parse, s.valid)
        table.add_row(
            s.category,
            str(s.entries),
            f"{s.accuracy:.1%}",
            *(f"{share:.1%}" if share is not None else "-" for share in shares),
            str(s.calls),
            f"{s.mean_latency_s:.2f}",
        )
    Console(highlight=False).print(table)
