"""`agent schedule run-now NAME [--occurrence latest|TIME]`: one occurrence, claimed in the
same ledger as the scheduler's, so whichever claimant comes first runs it and the others
find it taken. Without `--occurrence` it is a manual run at this millisecond (never a fire
time); with it, it is the slot an outside scheduler (systemd, cron, a CronJob) fired for, late
slots following the job's missed policy as the scheduler's do."""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent.errors import ConfigError
from agent.scheduler.daemon import LATE_S
from agent.scheduler.execute import run_occurrence
from agent.scheduler.jobs import Job
from agent.scheduler.ledger import Heartbeat, Ledger
from agent.scheduler.timing import parse_moment, utc_stamp, wall

WAIT_S = 1.0  # how often a queued run-now looks whether the running one has ended


@dataclass(frozen=True)
class RunNowResult:
    """What became of the occurrence: a run's status, or `skipped`, `missed`, `taken`."""

    status: str
    message: str
    run_id: str | None = None


def resolve_occurrence(job: Job, occurrence: str, now: float) -> float:
    """The slot `latest` or an ISO time names: one of the job's fire times, not in the future."""
    if occurrence == "latest":
        slot = job.trigger.latest_at_or_before(now)
        if slot is None:
            raise ConfigError(f"job {job.name!r} has no fire time at or before now")
        return slot
    slot = parse_moment(occurrence, job.trigger.tz)
    if not job.trigger.is_slot(slot):
        raise ConfigError(
            f"{occurrence} is not a fire time of job {job.name!r} ({job.trigger.describe()})"
        )
    if slot > now:
        raise ConfigError(f"{occurrence} is in the future; run-now runs a slot that is due")
    return slot


def run_now(ledger: Ledger, job: Job, occurrence: str | None) -> RunNowResult:
    """Claim the occurrence and, when it is ours, run it (after the job's running one, when
    its overlap policy is `queue`)."""
    now = time.time()
    if occurrence is None:
        at, trigger = _manual_moment(job, now), "manual"
    else:
        at, trigger = resolve_occurrence(job, occurrence, now), "outside"
        refusal = _refusal(job, at, now)
        if refusal:
            status, reason = refusal
            if ledger.record(job, at, status, reason, trigger):
                return RunNowResult(status, reason)
            return _taken(ledger, job, at)
    claimed = ledger.claim(job, at, trigger)
    if claimed == "taken":
        return _taken(ledger, job, at)
    if claimed == "skipped":
        found = ledger.occurrence(job, at)
        return RunNowResult("skipped", (found.reason if found else None) or "skipped")
    try:
        with Heartbeat(ledger.history.path):
            while not ledger.start(job, at):
                time.sleep(WAIT_S)
            result = run_occurrence(ledger, job, at)
    except BaseException:
        ledger.abandon_queued("run-now was stopped before it ran")
        raise
    return RunNowResult(result.status, result.reason or "", result.run_id)


def _manual_moment(job: Job, now: float) -> float:
    """The key of a manual run: this millisecond, never one of the job's fire times (a manual
    run in the very second the scheduler fires would otherwise find its slot taken)."""
    at = round(now, 3)
    return at + 0.001 if job.trigger.is_slot(at) else at


def _refusal(job: Job, at: float, now: float) -> tuple[str, str] | None:
    """Why an outside scheduler's slot must not run: paused, or missed by the job's policy."""
    if job.paused:
        return "skipped", "the job is paused"
    if now - at <= LATE_S:
        return None
    if job.options.missed == "skip":
        return "missed", f"fired {now - at:.0f} s late (missed: skip)"
    if now - at > job.options.grace_s:
        return "missed", f"fired {now - at:.0f} s late, past the grace period"
    return None


def _taken(ledger: Ledger, job: Job, at: float) -> RunNowResult:
    found = ledger.occurrence(job, at)
    state = f"{found.status}, claimed by pid {found.pid}" if found and found.pid else "recorded"
    return RunNowResult(
        "taken",
        f"the occurrence of {wall(at, job.trigger.tz)} ({utc_stamp(at)}) is taken already "
        f"({state})",
    )
