"""`agent scheduler run`: the one process per database that claims due occurrences and runs
them, one at a time, on one loaded model (the local backend keeps it, and its prefix cache,
for the life of the process).

A ticker thread, on its own connection, looks at every job each second and claims what is
due; the main thread runs the claims in order, so a long run delays the next by at most its
time limit, and a stop signal reaches the run in progress. Slots more than `LATE_S` late were
missed while nothing was running: the job's missed policy says whether the latest one within
its grace period runs; the rest are recorded `missed`. A backlog never runs more than once.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from agent.errors import AgentError
from agent.history.store import History
from agent.scheduler.execute import run_occurrence
from agent.scheduler.jobs import Job
from agent.scheduler.ledger import HEARTBEAT_S, Ledger
from agent.scheduler.timing import utc_stamp, wall

LATE_S = 60.0  # a slot claimed later than this was missed, not merely a tick late
MAX_BACKLOG = 1000  # missed slots recorded one by one, per job and tick
TICK_S = 1.0
log = logging.getLogger("agent")


class SchedulerBusyError(AgentError):
    """Another scheduler holds the database."""

    exit_code = 1


def lock_path(db: Path) -> Path:
    """The lock file beside the database (the kernel frees it when its holder dies)."""
    return db.with_name(db.name + ".scheduler-lock")


@contextlib.contextmanager
def exclusive(db: Path) -> Iterator[None]:
    """Hold the database's scheduler lock, or raise `SchedulerBusyError` at once."""
    lock = FileLock(str(lock_path(db)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SchedulerBusyError(_busy_message(db)) from None
    try:
        yield
    finally:
        lock.release()


def scheduler_running(db: Path) -> bool:
    """Whether a scheduler holds the database's lock now."""
    try:
        with exclusive(db):
            return False
    except SchedulerBusyError:
        return True


def _busy_message(db: Path) -> str:
    with History(db) as history:
        row = Ledger(history).scheduler_row()
    who = f" (pid {row.pid}, up since {utc_stamp(row.started_at)})" if row else ""
    return (
        f"another scheduler is running on {db}{who}; one per database: stop it first, or "
        "give this one another AGENT_HISTORY"
    )


@dataclass(frozen=True)
class Plan:
    """What one tick does with a job's due slots."""

    run: float | None
    missed: list[tuple[float, str]]


def plan(job: Job, due: list[float], now: float) -> Plan:
    """The slot to run and the slots to record `missed`, from the slots due at `now`."""
    on_time = [slot for slot in due if now - slot <= LATE_S]
    late = [slot for slot in due if now - slot > LATE_S]
    run = on_time[-1] if on_time else None
    if run is None and job.options.missed == "run-once":
        within = [slot for slot in late if now - slot <= job.options.grace_s]
        run = within[-1] if within else None
    missed = []
    for slot in late + on_time[:-1]:
        if slot == run:
            continue
        if run is not None:
            reason = f"coalesced into the run of {wall(run, job.trigger.tz)}"
        elif job.options.missed == "skip":
            reason = "the scheduler was not running then (missed: skip)"
        else:
            reason = "the scheduler was not running then, and it is past the grace period"
        missed.append((slot, reason))
    return Plan(run, missed)


def tick(ledger: Ledger, now: float) -> list[tuple[Job, float]]:
    """Deal with every slot due by `now`; the occurrences claimed (queued) to run, in order."""
    claimed = []
    for job in ledger.jobs():
        if not job.paused:
            due = job.trigger.due(ledger.checked_until(job), now, MAX_BACKLOG)
            decided = plan(job, due, now)
            for slot, reason in decided.missed:
                ledger.record(job, slot, "missed", reason, "schedule")
            if decided.run is not None and ledger.claim(job, decided.run, "schedule") == "queued":
                claimed.append((job, decided.run))
        ledger.set_checked_until(job, now)
    return claimed


@dataclass
class Scheduler:
    """The scheduler of one database; `serve()` runs until `stopping` is set."""

    db: Path
    clock: Callable[[], float] = time.time
    tick_s: float = TICK_S
    stopping: threading.Event = field(default_factory=threading.Event)
    running: bool = False  # a run is in progress (a stop signal then interrupts it)
    _work: queue.Queue[tuple[Job, float]] = field(default_factory=queue.Queue)

    def serve(self) -> None:
        """Claim and run occurrences until stopped; queued ones left are recorded missed."""
        with exclusive(self.db), History(self.db) as history:
            ledger = Ledger(history)
            ledger.recover()
            ledger.register_scheduler()
            ticker = threading.Thread(target=self._tick_loop, daemon=True, name="ticker")
            ticker.start()
            log.info("scheduler: watching %d jobs in %s", len(ledger.jobs()), self.db)
            try:
                self._run_loop(ledger)
            except KeyboardInterrupt:
                if not self.stopping.is_set():
                    raise
            finally:
                self.stopping.set()
                ticker.join(timeout=10)
                ledger.abandon_queued("the scheduler stopped before it ran")
                ledger.unregister_scheduler()
                log.info("scheduler: stopped")

    def _tick_loop(self) -> None:
        with History(self.db) as history:
            ledger = Ledger(history)
            beat = time.monotonic()
            while not self.stopping.is_set():
                try:
                    for item in tick(ledger, self.clock()):
                        self._work.put(item)
                    if time.monotonic() - beat >= HEARTBEAT_S:
                        ledger.heartbeat()
                        beat = time.monotonic()
                except Exception as exc:  # a busy or broken database must not end the loop
                    log.warning("scheduler: tick failed: %s", exc)
                self.stopping.wait(self.tick_s)

    def _run_loop(self, ledger: Ledger) -> None:
        waiting: deque[tuple[Job, float]] = deque()
        while not self.stopping.is_set():
            with contextlib.suppress(queue.Empty):
                waiting.append(self._work.get(timeout=0.2))
            for job, at in list(waiting):
                if ledger.start(job, at):  # else a run of the job from elsewhere is running
                    waiting.remove((job, at))
                    self._run(ledger, ledger.job_by_id(job.id) or job, at)
                    break

    def _run(self, ledger: Ledger, job: Job, at: float) -> None:
        self.running = True
        try:
            run_occurrence(ledger, job, at)
        except Exception as exc:  # one job's failure never stops the scheduler
            log.warning("job %s: %s", job.name, exc)
            ledger.finish(job, at, "failed", f"{type(exc).__name__}: {exc}", None)
        finally:
            self.running = False
