"""`agent runs steps|fork|resume|replay`: a recorded run taken up again.

`fork` and `resume` run the model (through the session core, in this process or the resident
service, as `agent run` does), with the run's recorded settings under any flags given;
`replay` runs no model at all: the recorded tool calls run again on the tools as they are now.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from typing import Any

import click

from agent.cli.common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, setup_logging
from agent.cli.options import (
    history_options,
    json_option,
    model_options,
    recorded_settings_from,
    selection_options,
    service_options,
    tool_options,
)
from agent.cli.run import read_prompt
from agent.config import Settings, load_settings
from agent.errors import ConfigError
from agent.history.rerun import Start, fork_start, resume_start
from agent.history.store import History
from agent.history.transcript import NOT_RUN_KEY, Step, steps
from agent.render import visible

NOT_RUN_AGAIN = (
    "this call had not returned when the run stopped, and the user chose not to run it again"
)
COLUMNS = "step  tool                  arguments                                 "


def short(value: Any, width: int) -> str:
    """`value` (JSON unless text) on one line, cut to `width` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _step_line(step: Step, last: str) -> str:
    name, arguments = short(step.name, 20), short(step.arguments, 40)
    return visible(f"{step.number:>4}  {name:<20}  {arguments:<40}  {last}")


@click.command("steps")
@click.argument("run_id", metavar="ID")
@json_option("one JSON object per step")
def list_steps(run_id: str, as_json: bool) -> int:
    """The tool calls of a run, numbered from 1: `agent runs fork ID --at STEP` forks before
    call STEP (the model decides again from there)."""
    with History(load_settings().history) as history:
        found = steps(history.events(history.run(run_id).id))
    if found and not as_json:
        print(COLUMNS + "result")
    for step in found:
        if as_json:
            fields = ("number", "name", "arguments", "ok", "result")
            print(json.dumps({f: getattr(step, f) for f in fields}, ensure_ascii=False))
            continue
        outcome = "did not return" if step.ok is None else "ok" if step.ok else "error"
        print(_step_line(step, f"{outcome}: {short(step.result or '', 40)}".rstrip(": ")))
    if not found and not as_json:
        print("no tool calls", file=sys.stderr)
    return EXIT_OK


@click.command("fork")
@click.argument("run_id", metavar="ID")
@click.argument("prompt", required=False)
@click.option(
    "--at",
    "step",
    type=click.IntRange(min=1),
    metavar="STEP",
    help="start before the run's tool call STEP (1: the first; agent runs steps ID lists "
    "them): the model decides again from there. Default: from the run's end",
)
@json_option("print JSON Lines events on stdout")
@model_options
@tool_options
@selection_options
@history_options
@service_options
def fork(run_id: str, prompt: str | None, step: int | None, as_json: bool, **flags: Any) -> int:
    """Start a new run (a new conversation) from a recorded run's messages and let the model
    go on from there, with the run's settings (flags override them).

    With --at STEP, the new run has the messages before tool call STEP; without it, all of
    them. PROMPT, if given, is a new user message there (`agent runs fork ID "and now in
    Paris?"`); without it the model goes on with the run's own task.
    """
    text = read_prompt(prompt) if prompt else None
    with History(load_settings().history) as history:
        start = fork_start(history, run_id, step, text)
        settings = recorded_settings_from(flags, history.run_settings(start.source.id))
        return _run(start, settings, history, as_json)


@click.command("resume")
@click.argument("run_id", metavar="ID")
@click.option(
    "--yes", "-y", is_flag=True, help="run the tool calls that had not returned again, unasked"
)
@json_option("print JSON Lines events on stdout")
@model_options
@tool_options
@selection_options
@history_options
@service_options
def resume(run_id: str, yes: bool, as_json: bool, **flags: Any) -> int:
    """Go on with an interrupted or cancelled run where it stopped, in its conversation, with
    its settings (flags override them). Tool calls that had not returned run again only if you
    say so (asked here; --yes: allowed)."""
    with History(load_settings().history) as history:
        start = resume_start(history, run_id)
        settings = recorded_settings_from(flags, history.run_settings(start.source.id))
        start.pending = _decided(start, yes)
        if settings.log:  # the run's messages end where the resume takes over
            history.set_messages(start.source.id, start.kept)
        return _run(start, settings, history, as_json)


def _decided(start: Start, yes: bool) -> list[dict[str, Any]]:
    """The calls that had not returned, each allowed to run again or marked as not run."""
    calls = start.pending
    if not calls or yes:
        return calls
    shown = [
        visible(f"{c['function_call']['name']} {c['function_call']['arguments']}") for c in calls
    ]
    if sys.stdin is None or not sys.stdin.isatty():
        raise ConfigError(
            f"run {start.source.id} stopped during {len(calls)} tool call(s) ({'; '.join(shown)}) "
            "that resuming runs again: add --yes to allow that (no terminal here to ask)"
        )
    decided = []
    for call, text in zip(calls, shown, strict=True):
        if click.confirm(f"{text} had not returned when the run stopped; run it again?", err=True):
            decided.append(call)
        else:
            extra = {**(call.get("extra") or {}), NOT_RUN_KEY: NOT_RUN_AGAIN}
            decided.append({**call, "extra": extra})
    return decided


def _run(start: Start, settings: Settings, history: History, as_json: bool) -> int:
    """Run the model from `start`, shown and recorded as `agent run` shows and records."""
    from agent.render import JsonLinesRenderer, TerminalRenderer
    from agent.service.client import open_session
    from agent.session import Conversation

    setup_logging(settings.debug)
    renderer = JsonLinesRenderer() if as_json else TerminalRenderer(settings.show_thinking)
    with open_session(settings) as session:
        talk = Conversation(
            session,
            settings,
            history if settings.log else None,
            "run",
            start.conversation,
            start.messages,
            origin=start.origin,
        )
        if start.continues:
            status = talk.go_on(start.prompt, renderer.show, start.pending)
        else:
            status = talk.turn(start.prompt, renderer.show)
    if talk.recorder and talk.recorder.run:
        print(f"{start.origin.kind} of {start.source.id}: run {talk.recorder.run}", file=sys.stderr)
    if status == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK if status == "answered" else EXIT_FAILED


def _patterns(texts: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for text in texts:
        try:
            compiled.append(re.compile(text))
        except re.error as exc:
            raise ConfigError(f"--ignore {text!r}: not a regular expression ({exc})") from None
    return tuple(compiled)


@click.command("replay")
@click.argument("run_id", metavar="ID")
@click.option("--check", is_flag=True, help="a test: exit 1 when any call is different or an error")
@click.option(
    "--ignore-key",
    "ignore_keys",
    multiple=True,
    metavar="KEY",
    help="leave this key of JSON results out of the comparison, at any depth (repeatable)",
)
@click.option(
    "--ignore",
    "ignore_patterns",
    multiple=True,
    metavar="REGEX",
    help="leave text matching REGEX out of the comparison (repeatable)",
)
@json_option("one JSON object per call")
@tool_options
@selection_options
def replay(
    run_id: str,
    check: bool,
    ignore_keys: tuple[str, ...],
    ignore_patterns: tuple[str, ...],
    as_json: bool,
    **flags: Any,
) -> int:
    """Run a recorded run's tool calls again, with no model: each call the model made runs on
    the tools as they are now (the run's plugins, MCP servers, code interpreter) and its
    result is compared with the recorded one: same, different or error."""
    from agent.loop.replay import DIFFERENT, ERROR, Ignore, replay_calls

    ignore = Ignore(ignore_keys, _patterns(ignore_patterns))
    with History(load_settings().history) as history:
        run = history.run(run_id)
        recorded = steps(history.events(run.id))
        settings = recorded_settings_from(flags, history.run_settings(run.id))
    setup_logging(settings.debug)
    verdicts: Counter[str] = Counter()
    if not as_json and recorded:
        print(COLUMNS + "result")
    for checked in replay_calls(settings, recorded, ignore):
        verdicts[checked.verdict] += 1
        step, now = checked.step, checked.now
        if as_json:
            line = {
                "step": step.number,
                "name": step.name,
                "arguments": step.arguments,
                "verdict": checked.verdict,
                "reason": checked.reason,
                "recorded": step.result,
                "recorded_ok": step.ok,
                "now": now.content if now else None,
                "now_ok": now.ok if now else None,
            }
            print(json.dumps(line, ensure_ascii=False), flush=True)
            continue
        said = f"{checked.verdict}: {checked.reason}" if checked.reason else checked.verdict
        print(_step_line(step, said), flush=True)
        if checked.verdict in (DIFFERENT, ERROR) and now is not None:
            print(visible(f"        recorded: {short(step.result or '', 100)}"))
            print(visible(f"        now:      {short(now.content, 100)}"))
    counts = [f"{n} {verdict}" for verdict, n in verdicts.items()]
    print(f"{len(recorded)} tool calls: {', '.join(counts) or 'none'}", file=sys.stderr)
    return EXIT_FAILED if check and (verdicts[DIFFERENT] or verdicts[ERROR]) else EXIT_OK
