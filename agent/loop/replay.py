"""Replaying a recorded run's tool calls with no model: each call the model made, taken from
the history, runs again on the tools as they are now, exactly as the tool loop runs it (the
call checks, the plugin hooks, the result limit), and its result is compared with the one
recorded. A run recorded once is then a regression test of its tools.

Results that change by nature (times, ids) can be left out of the comparison: a key of a JSON
result at any depth (`Ignore.keys`), or text matching a regular expression (`Ignore.patterns`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.config import Settings
from agent.history.transcript import Step, call_message
from agent.loop.assistant import build_assistant
from agent.loop.call_checks import RepeatGuard
from agent.paths import new_run_dir
from agent.tools.invoke import ToolOutcome
from agent.tools.toolset import open_tools

SAME, DIFFERENT, ERROR, NOT_RUN = "same", "different", "error", "not run"
MASK = "…"


@dataclass(frozen=True)
class Ignore:
    """What a comparison leaves out: `keys` of JSON results (at any depth), and the text
    `patterns` match (in any result)."""

    keys: tuple[str, ...] = ()
    patterns: tuple[re.Pattern[str], ...] = ()

    def normalize(self, text: str) -> str:
        """`text` as compared: without the ignored keys when it is JSON, patterns masked."""
        if self.keys:
            with contextlib.suppress(ValueError):
                text = json.dumps(_without_keys(json.loads(text), set(self.keys)), sort_keys=True)
        for pattern in self.patterns:
            text = pattern.sub(MASK, text)
        return text


def _without_keys(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without_keys(item, keys) for item in value]
    return value


@dataclass(frozen=True)
class CallCheck:
    """One recorded call run again: what it gives now (`now` None: not run) and the verdict,
    `same`, `different`, `error` (with `reason`: it fails now, or it failed before and not
    now) or `not run` (it had not returned in the recording: nothing to compare)."""

    step: Step
    now: ToolOutcome | None
    verdict: str
    reason: str = ""


def judge(step: Step, now: ToolOutcome, ignore: Ignore) -> CallCheck:
    """How the call's result now compares with the recorded one."""
    assert step.result is not None
    if step.ok and not now.ok:
        return CallCheck(step, now, ERROR, "fails now")
    if not step.ok and now.ok:
        return CallCheck(step, now, ERROR, "failed in the recording, not now")
    same = ignore.normalize(step.result) == ignore.normalize(now.content)
    return CallCheck(step, now, SAME if same else DIFFERENT)


@dataclass
class _Outcomes:
    """The tool listener that keeps each call's outcome."""

    last: ToolOutcome | None = None

    def tool_started(self, name: str, arguments: Any) -> None:
        pass

    def tool_finished(self, outcome: ToolOutcome) -> None:
        self.last = outcome

    def notice(self, kind: str, message: str) -> None:
        pass


class _NoModel:
    """Stands where the model would: the model's outputs come from the history."""

    model = "none (replay)"
    model_type = "replay"


def replay_calls(settings: Settings, steps: list[Step], ignore: Ignore) -> Iterator[CallCheck]:
    """Run each recorded call again, in order, with the tools `settings` open (a run's
    recorded settings: its plugins, MCP servers and code interpreter), and judge it."""
    with open_tools(settings, new_run_dir()) as toolset:
        assistant = build_assistant(settings, _NoModel(), toolset)
        outcomes = _Outcomes()
        assistant.tool_listener = outcomes
        repeats = RepeatGuard(settings.max_repeats)
        for step in steps:
            if step.result is None:
                yield CallCheck(step, None, NOT_RUN, "it had not returned in the recording")
                continue
            arguments = call_message(step.name, step.arguments)["function_call"]["arguments"]
            assistant.call_tool(step.name, arguments, repeats)
            assert outcomes.last is not None
            yield judge(step, outcomes.last, ignore)
