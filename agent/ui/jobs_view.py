"""The scheduled jobs as the jobs page shows them: the schedule in words, the next fire times
in the job's zone, and the recent outcomes as a strip of cells (oldest first) that open their
runs."""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.scheduler.jobs import Job
from agent.scheduler.ledger import Ledger, Occurrence
from agent.scheduler.timing import next_times, wall

NEXT_SHOWN = 3
OUTCOMES_SHOWN = 30
# The cells' colours (agent/ui/static/app.css); other states (queued, running) are grey.
OUTCOME_CLASSES = {
    "succeeded": "ok", "failed": "failed", "skipped": "skipped", "missed": "missed",
    "interrupted": "interrupted", "timed_out": "failed",
}  # fmt: skip


@dataclass(frozen=True)
class OutcomeCell:
    """One occurrence: its status, when it was due (in the job's zone), why, and its run."""

    status: str
    css: str
    when: str
    reason: str
    run_id: str | None
    trigger: str


@dataclass(frozen=True)
class JobView:
    """A job on the page."""

    name: str
    task: str
    schedule: str
    paused: bool
    next_runs: list[str]
    outcomes: list[OutcomeCell]


def job_views(ledger: Ledger, now: float | None = None) -> list[JobView]:
    """Every job, by name."""
    now = time.time() if now is None else now
    return [_view(ledger, job, now) for job in sorted(ledger.jobs(), key=lambda j: j.name)]


def _view(ledger: Ledger, job: Job, now: float) -> JobView:
    upcoming = [] if job.paused else next_times(job.trigger, now, NEXT_SHOWN)
    found = reversed(ledger.occurrences(job, OUTCOMES_SHOWN))
    return JobView(
        name=job.name,
        task=job.options.task_file or job.task,
        schedule=job.trigger.describe(),
        paused=job.paused,
        next_runs=[wall(moment, job.trigger.tz) for moment in upcoming],
        outcomes=[_cell(job, occurrence) for occurrence in found],
    )


def _cell(job: Job, occurrence: Occurrence) -> OutcomeCell:
    return OutcomeCell(
        status=occurrence.status,
        css=OUTCOME_CLASSES.get(occurrence.status, "other"),
        when=wall(occurrence.scheduled_at, job.trigger.tz),
        reason=occurrence.reason or "",
        run_id=occurrence.run_id,
        trigger=occurrence.trigger,
    )
