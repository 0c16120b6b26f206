"""Run one claimed occurrence: the real runner, recorded in the run history, then the ledger,
the answer file and the hooks.

A run is a conversation of kind `job` in the history, with its events as any run has them;
a run that cannot even start (the model does not load, a tool server is missing, the job's
task file has become invalid) is recorded too, as `run_started`, `error`, `run_finished`, so
its reason is where the user looks. A task file is read again at each run; its sha256 goes to
the ledger and the run's recorded settings, and its output (a file, JSON checked against a
schema) is written after a successful run, or the run fails saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.events import Answer, Error, Event, RunFinished, RunStarted
from agent.history.recorder import RunRecorder
from agent.paths import jobs_dir, write_atomically
from agent.render import Tee
from agent.scheduler.hooks import run_hook
from agent.scheduler.jobs import Job, job_settings, job_time_limit
from agent.scheduler.ledger import Ledger
from agent.scheduler.outcome import Outcome, outcome_of
from agent.scheduler.timing import utc_stamp
from agent.tasks import (
    Task,
    TaskOutputError,
    bind,
    deliver,
    file_sha256,
    load_task,
    parse_params,
    render_prompt,
)

log = logging.getLogger("agent")


@dataclass(frozen=True)
class Result:
    """What became of an occurrence that ran."""

    status: str
    reason: str | None
    run_id: str | None
    answer_file: str | None


class _Collector:
    """Keeps a run's events (the outcome and the answer file are read from them)."""

    def __init__(self, ledger: Ledger, job: Job, at: float, recorder: RunRecorder) -> None:
        self.events: list[Event] = []
        self._link = (ledger, job, at, recorder)

    def show(self, event: Event) -> None:
        self.events.append(event)
        ledger, job, at, recorder = self._link
        if isinstance(event, RunStarted) and recorder.run is not None:
            ledger.attach_run(job, at, recorder.run)


def run_occurrence(ledger: Ledger, job: Job, at: float) -> Result:
    """Run `job`'s occurrence at `at`, which this process has started in the ledger."""
    from agent.service.client import open_session
    from agent.session import Conversation

    history = ledger.history
    log.info("job %s: started the run of %s", job.name, utc_stamp(at))
    prepared = _prepare(ledger, job, at)
    settings = job_settings(job, prepared.task)
    outcome = Outcome("interrupted", "the run was stopped before it ended")
    recorder = RunRecorder(
        history, history.new_conversation("job"), settings, extra=prepared.record
    )
    collector = _Collector(ledger, job, at, recorder)
    ask = _refuse if settings.approve != "none" else None
    try:
        try:
            if prepared.problem:
                raise AgentError(prepared.problem)
            with open_session(settings, ask) as session:
                talk = Conversation(session, settings, history, "job", recorder=recorder)
                limit = job_time_limit(job, prepared.task)
                talk.turn(prepared.prompt, collector.show, time_limit_s=limit)
        except AgentError as exc:  # it could not start: recorded as a run with its error
            show = Tee(recorder, collector).show
            _record_failed_start(show, prepared.prompt, settings.model, str(exc))
        outcome = _delivered(prepared.task, collector.events, outcome_of(collector.events))
    finally:
        answer_file = _write_answer(job, at, collector.events, outcome)
        ledger.finish(job, at, outcome.status, outcome.reason, answer_file)
        log.info(
            "job %s: %s%s (run %s)",
            job.name,
            outcome.status,
            f": {outcome.reason}" if outcome.reason else "",
            recorder.run,
        )
    result = Result(outcome.status, outcome.reason, recorder.run, answer_file)
    _run_hooks(job, at, result)
    return result


@dataclass(frozen=True)
class _Prepared:
    """What a run of the job sends: its prompt, and for a task file's job the task (None when
    the file is invalid now: `problem` says why) and what the run's history keeps of it."""

    prompt: str
    task: Task | None = None
    problem: str | None = None
    record: dict[str, Any] | None = None


def _prepare(ledger: Ledger, job: Job, at: float) -> _Prepared:
    """The job's task text; or its task file as it is on disk now, its hash in the ledger."""
    if not job.options.task_file:
        return _Prepared(job.task)
    path = Path(job.options.task_file)
    try:
        task = load_task(path)
    except AgentError as exc:  # the hash of what is there, if anything, says what failed
        sha256 = file_sha256(path)
        ledger.set_task_sha256(job, at, sha256)
        record = {"task": {"file": str(path), "sha256": sha256}}
        return _Prepared(f"(task file {path})", problem=str(exc), record=record)
    ledger.set_task_sha256(job, at, task.sha256)
    try:
        values = bind(task, parse_params(job.options.params))
    except AgentError as exc:
        record = {"task": task.record({})}
        return _Prepared(f"(task file {path})", problem=str(exc), record=record)
    return _Prepared(render_prompt(task, values), task, record={"task": task.record(values)})


def _delivered(task: Task | None, events: list[Event], outcome: Outcome) -> Outcome:
    """The outcome once a task file's output is written: failed when the answer is not what
    the output asks for (nothing is written then)."""
    answer = _answer_text(events)
    if task is None or outcome.status != "succeeded" or answer is None:
        return outcome
    try:
        deliver(task, answer)
    except TaskOutputError as exc:
        return Outcome("failed", str(exc))
    return outcome


def _refuse(name: str, arguments: dict[str, Any]) -> str:
    """A job's answer where its task file asks approval before a tool: no one is there."""
    log.warning("job: refused %s: the task file asks approval for it, and a job cannot ask", name)
    return "n"


def _record_failed_start(
    show: Callable[[Event], None], prompt: str, model: str, message: str
) -> None:
    started = RunStarted(prompt=prompt, model=model, backend="", thinking=False, tools=[])
    show(started)
    show(Error(message=message, where="agent"))
    show(RunFinished(status="error", usage={}, timings={}))


def _answer_text(events: list[Event]) -> str | None:
    answers = [e.text for e in events if isinstance(e, Answer)]
    return answers[-1] if answers else None


def _write_answer(job: Job, at: float, events: list[Event], outcome: Outcome) -> str | None:
    """A successful run's answer, written atomically: the job's file, or one file per run."""
    text = _answer_text(events)
    if outcome.status != "succeeded" or text is None:
        return None
    if job.options.output:
        path = Path(job.options.output)
    else:
        folder = Path(job.options.output_dir) if job.options.output_dir else jobs_dir() / job.name
        stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = folder / f"{job.name}-{stamp}.md"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text.rstrip("\n") + "\n")
    except OSError as exc:
        log.warning("job %s: cannot write the answer to %s: %s", job.name, path, exc)
        return None
    return str(path)


def _run_hooks(job: Job, at: float, result: Result) -> None:
    command = job.options.on_success if result.status == "succeeded" else job.options.on_failure
    if not command:
        return
    run_hook(
        command,
        {
            "job": job.name,
            "run_id": result.run_id or "",
            "status": result.status,
            "reason": result.reason or "",
            "occurrence": utc_stamp(at),
            "answer_file": result.answer_file or "",
        },
    )
