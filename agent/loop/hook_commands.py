"""The user's hook commands (`[hooks]` in config.toml), as a plugin on the four hook points.

Each command is an argv run without a shell, in its own process group, in the run's working
directory, with the environment of the command the user started (the client's, when the run is
in the resident service). It gets the hook's arguments as one JSON object on stdin, with
`hook` (the point) and `cwd` added; its stdout is ignored. A command still running after
`hook_timeout` seconds is killed with its whole process group and counts as failed.

`before_tool_call`: a command that exits non-zero, runs over its time or cannot start blocks
the call, and its stderr (trimmed, capped, control characters made visible) is the reason the
model reads as the call's error result; a hook that cannot decide does not let the call run.
The other points: a failure is one line for the user (a `notice`), and the run goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import Command, HookCommands
from agent.plugins import hookimpl
from agent.render import visible

log = logging.getLogger("agent")

STDERR_LIMIT = 2_000  # characters of a hook's stderr kept (the reason a blocked call gets)
NOTE_STDERR_LIMIT = 200  # of it, in the one-line note of a failed hook
SHOWN_COMMAND_LIMIT = 80


@dataclass(frozen=True)
class HookRun:
    """How one hook command went."""

    command: str  # as shown to the user: quoted, shortened, made visible
    returncode: int | None  # None: it did not start, or was killed at its time limit
    problem: str  # "" when it exited 0, else what went wrong
    stderr: str  # trimmed, capped, made visible

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def note(self, point: str) -> str:
        """The failure as one line."""
        said = " ".join(self.stderr.split())
        if len(said) > NOTE_STDERR_LIMIT:
            said = said[: NOTE_STDERR_LIMIT - 1] + "…"
        return f"{point} hook ({self.command}) {self.problem}" + (f": {said}" if said else "")

    def refusal(self) -> str:
        """Why a `before_tool_call` command blocks the call: what it said on stderr when it
        exited non-zero, else what went wrong."""
        if self.returncode and self.stderr:
            return self.stderr
        said = f"\n{self.stderr}" if self.stderr else ""
        return f"blocked by the before_tool_call hook ({self.command}): {self.problem}{said}"


def _shown(argv: Command) -> str:
    """The command as the user reads it: quoted, its middle left out past the limit."""
    text = visible(shlex.join(argv))
    if len(text) <= SHOWN_COMMAND_LIMIT:
        return text
    half = SHOWN_COMMAND_LIMIT // 2
    return text[: half - 1] + "…" + text[-half:]


def _cleaned(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    if len(text) > STDERR_LIMIT:
        text = text[:STDERR_LIMIT].rstrip() + f" … [cut at {STDERR_LIMIT:,} characters]"
    return visible(text)


def _problem(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by signal {-returncode}"
    return f"exited with {returncode}" if returncode else ""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_hook_command(
    argv: Command, event: dict[str, Any], timeout_s: float, environ: Mapping[str, str] | None
) -> HookRun:
    """Run one hook command with `event` as JSON on stdin; how it went (never an exception for
    a command that fails, is missing or hangs)."""
    shown = _shown(argv)
    payload = json.dumps(event, ensure_ascii=False, default=str).encode()
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env=dict(environ) if environ is not None else None,  # PATH looked up in it
                start_new_session=True,  # its own process group: killed whole
            )
        except FileNotFoundError:
            return HookRun(shown, None, f"cannot run: {visible(argv[0])!r} not found", "")
        except OSError as exc:
            return HookRun(shown, None, f"cannot run: {visible(exc.strerror or str(exc))}", "")
        with process:
            try:
                process.communicate(payload, timeout=timeout_s)
                returncode: int | None = process.returncode
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                if process.poll() is None:  # over its time, or we were interrupted (Ctrl-C)
                    _kill_group(process)
        errors.seek(0)
        stderr = _cleaned(errors.read(STDERR_LIMIT * 4))
    if returncode is None:
        return HookRun(shown, None, f"was killed at its time limit of {timeout_s:g} s", stderr)
    return HookRun(shown, returncode, _problem(returncode), stderr)


def _working_directory() -> str:
    try:
        return os.getcwd()
    except OSError:  # it was removed under us
        return ""


class CommandHooks:
    """The plugin that runs the user's hook commands at each point."""

    def __init__(
        self, commands: HookCommands, timeout_s: float, environ: Mapping[str, str] | None = None
    ) -> None:
        self.commands = commands
        self.timeout_s = timeout_s
        self.environ = environ  # None: this process's own, when each command starts

    def _run(self, point: str, arguments: dict[str, Any]) -> list[HookRun]:
        """Run `point`'s commands in order (a `before_tool_call` stops at its first failure)."""
        event = {"hook": point, "cwd": _working_directory(), **arguments}
        runs = []
        for argv in getattr(self.commands, point):
            runs.append(run_hook_command(argv, event, self.timeout_s, self.environ))
            if not runs[-1].ok:
                log.debug("%s", runs[-1].note(point))
                if point == "before_tool_call":
                    break
        return runs

    def _notes(self, point: str, arguments: dict[str, Any]) -> str | None:
        failed = [run.note(point) for run in self._run(point, arguments) if not run.ok]
        return "; ".join(failed) or None

    # Asked first, so a command that blocks a call does so before the user is asked about it.
    @hookimpl(tryfirst=True)
    def before_tool_call(self, name: str, arguments: dict[str, Any], run_id: str) -> str | None:
        """The first failing command's reason, or None to let the call run."""
        asked = {"run_id": run_id, "name": name, "arguments": arguments}
        runs = self._run("before_tool_call", asked)
        return next((run.refusal() for run in runs if not run.ok), None)

    @hookimpl
    def after_tool_call(
        self,
        name: str,
        arguments: dict[str, Any],
        result: str,
        ok: bool,
        duration_s: float,
        run_id: str,
    ) -> str | None:
        """What failed, in one line; None when every command exited 0."""
        return self._notes(
            "after_tool_call",
            {
                "run_id": run_id,
                "name": name,
                "arguments": arguments,
                "result": result,
                "ok": ok,
                "duration_s": duration_s,
            },
        )

    @hookimpl
    def run_started(
        self, run_id: str, prompt: str, model: str, backend: str, tools: list[str]
    ) -> str | None:
        """What failed, in one line; None when every command exited 0."""
        started = {"prompt": prompt, "model": model, "backend": backend, "tools": tools}
        return self._notes("run_started", {"run_id": run_id, **started})

    @hookimpl
    def run_finished(
        self,
        run_id: str,
        prompt: str,
        status: str,
        answer: str,
        usage: dict[str, int],
        timings: dict[str, float],
    ) -> str | None:
        """What failed, in one line; None when every command exited 0."""
        return self._notes(
            "run_finished",
            {
                "run_id": run_id,
                "prompt": prompt,
                "status": status,
                "answer": answer,
                "usage": usage,
                "timings": timings,
            },
        )
