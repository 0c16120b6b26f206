"""The jobs and the occurrence ledger, in the run history's database.

An occurrence is one job at one scheduled time (UTC seconds); `(job_id, scheduled_at)` is the
primary key. Whoever wants to run it (the scheduler, `run-now`, systemd, a CronJob) claims it
first, in one `BEGIN IMMEDIATE` transaction with the overlap check, so two claimants never
both get it. A claim records its process (pid and start time) and a heartbeat; a claim whose
process is gone or silent is recovered: `interrupted` if it had started, `missed` if not.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.errors import ConfigError
from agent.history.store import History, process_alive
from agent.scheduler.jobs import Job, JobOptions, job_from_row
from agent.scheduler.timing import Trigger

HEARTBEAT_S = 10.0
STALE_S = 120.0  # a claim with no heartbeat for this long is taken for dead
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "timed_out", "skipped", "missed", "interrupted")
_JOB_COLUMNS = "id, name, created_at, paused, spec"
_OCCURRENCE_COLUMNS = (
    "job_id, scheduled_at, status, reason, trigger, run_id, answer_file, pid, claimed_at, "
    "started_at, finished_at, task_sha256"
)


@dataclass(frozen=True)
class Occurrence:
    """One row of the ledger."""

    job_id: int
    scheduled_at: float
    status: str
    reason: str | None
    trigger: str  # "schedule", "manual" (run-now) or "outside" (run-now --occurrence)
    run_id: str | None
    answer_file: str | None
    pid: int | None
    claimed_at: float
    started_at: float | None
    finished_at: float | None
    task_sha256: str | None = None  # the task file's content, for a job of a task file


@dataclass(frozen=True)
class SchedulerRow:
    """The scheduler process that holds the database."""

    pid: int
    pid_started: float
    started_at: float
    heartbeat_at: float


def _name_taken(name: str) -> ConfigError:
    return ConfigError(
        f"a job named {name!r} exists already: pick another name, or change it with "
        f"'agent schedule edit {name}'"
    )


def _me() -> tuple[int, float]:
    me = psutil.Process()
    return me.pid, me.create_time()


class Ledger:
    """Jobs and occurrences over an open `History`."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.db = history.db

    # --- jobs --------------------------------------------------------------------------------

    def add_job(self, name: str, task: str, trigger: Trigger, options: JobOptions) -> Job:
        """A new job; its slots count from now on."""
        now = time.time()
        job = Job(id=0, name=name, task=task, trigger=trigger, options=options, created_at=now)
        try:
            with self.history.transaction() as db:
                db.execute(
                    "INSERT INTO jobs (name, created_at, paused, spec, checked_until) "
                    "VALUES (?, ?, 0, ?, ?)",
                    (name, now, job.spec_json(), now),
                )
        except sqlite3.IntegrityError:
            raise _name_taken(name) from None
        return self.job(name)

    def check_free(self, name: str) -> None:
        """A one-line error when a job is called `name` already."""
        if self.db.execute("SELECT 1 FROM jobs WHERE name = ?", (name,)).fetchone():
            raise _name_taken(name)

    def job(self, name: str) -> Job:
        """The job called `name`, or a one-line error naming the jobs there are."""
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            names = ", ".join(job.name for job in self.jobs()) or "none yet"
            raise ConfigError(f"no job named {name!r} (jobs: {names}; agent schedule list)")
        return job_from_row(row)

    def job_by_id(self, job_id: int) -> Job | None:
        """The job with this id, if it still exists."""
        row = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else job_from_row(row)

    def jobs(self) -> list[Job]:
        """Every job, by name."""
        rows = self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY name")
        return [job_from_row(row) for row in rows]

    def replace_job(self, job: Job) -> None:
        """Store an edited job; its slots count again from now (none is made up for the edit)."""
        self.db.execute(
            "UPDATE jobs SET spec = ?, checked_until = MAX(checked_until, ?) WHERE id = ?",
            (job.spec_json(), time.time(), job.id),
        )

    def set_paused(self, job: Job, paused: bool) -> None:
        """Pause or resume; slots that fell in the pause are not run on resume."""
        self.db.execute(
            "UPDATE jobs SET paused = ?, checked_until = MAX(checked_until, ?) WHERE id = ?",
            (int(paused), time.time(), job.id),
        )

    def remove_job(self, job: Job) -> None:
        """Delete the job and its ledger (its runs stay in the run history)."""
        self.db.execute("DELETE FROM jobs WHERE id = ?", (job.id,))

    def checked_until(self, job: Job) -> float:
        """The job's watermark: every slot up to it has been dealt with."""
        row = self.db.execute("SELECT checked_until FROM jobs WHERE id = ?", (job.id,)).fetchone()
        return float(row[0]) if row else time.time()

    def set_checked_until(self, job: Job, moment: float) -> None:
        """Move the watermark on (never back)."""
        self.db.execute(
            "UPDATE jobs SET checked_until = MAX(checked_until, ?) WHERE id = ?", (moment, job.id)
        )

    # --- occurrences -------------------------------------------------------------------------

    def claim(self, job: Job, at: float, trigger: str) -> str:
        """Claim the occurrence of `job` at `at` for this process, applying the job's overlap
        policy: `queued` (ours: start it with `start`), `skipped` (recorded), or `taken`
        (another claimant has it)."""
        pid, pid_started = _me()
        now = time.time()
        with self.history.transaction() as db:
            self._recover(db, now)
            if db.execute(
                "SELECT 1 FROM occurrences WHERE job_id = ? AND scheduled_at = ?", (job.id, at)
            ).fetchone():
                return "taken"
            active = [
                status
                for (status,) in db.execute(
                    "SELECT status FROM occurrences WHERE job_id = ? AND status IN (?, ?)",
                    (job.id, *ACTIVE),
                )
            ]
            status, reason = "queued", None
            if active and (job.options.overlap == "skip" or "queued" in active):
                status = "skipped"
                reason = (
                    "the previous run was still running (overlap: skip)"
                    if job.options.overlap == "skip"
                    else "one run was queued already behind the running one (overlap: queue)"
                )
            db.execute(
                "INSERT INTO occurrences (job_id, scheduled_at, status, reason, trigger, pid, "
                "pid_started, heartbeat_at, claimed_at, finished_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    at,
                    status,
                    reason,
                    trigger,
                    pid,
                    pid_started,
                    now,
                    now,
                    now if status == "skipped" else None,
                ),
            )
        return status

    def record(self, job: Job, at: float, status: str, reason: str, trigger: str) -> bool:
        """Record an occurrence that will not run (`missed`), unless it is claimed already."""
        now = time.time()
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO occurrences (job_id, scheduled_at, status, reason, trigger, "
            "claimed_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job.id, at, status, reason, trigger, now, now),
        )
        return cursor.rowcount == 1

    def start(self, job: Job, at: float) -> bool:
        """Our queued occurrence becomes `running`, if no other run of the job is running."""
        pid, _ = _me()
        with self.history.transaction() as db:
            self._recover(db, time.time())
            if db.execute(
                "SELECT 1 FROM occurrences WHERE job_id = ? AND status = 'running'", (job.id,)
            ).fetchone():
                return False
            cursor = db.execute(
                "UPDATE occurrences SET status = 'running', started_at = ?, heartbeat_at = ? "
                "WHERE job_id = ? AND scheduled_at = ? AND status = 'queued' AND pid = ?",
                (time.time(), time.time(), job.id, at, pid),
            )
        return cursor.rowcount == 1

    def attach_run(self, job: Job, at: float, run_id: str) -> None:
        """Link the occurrence to its run in the run history."""
        self.db.execute(
            "UPDATE occurrences SET run_id = ? WHERE job_id = ? AND scheduled_at = ?",
            (run_id, job.id, at),
        )

    def set_task_sha256(self, job: Job, at: float, sha256: str | None) -> None:
        """Record which content of the job's task file the occurrence ran."""
        self.db.execute(
            "UPDATE occurrences SET task_sha256 = ? WHERE job_id = ? AND scheduled_at = ?",
            (sha256, job.id, at),
        )

    def finish(
        self, job: Job, at: float, status: str, reason: str | None, answer_file: str | None
    ) -> None:
        """The occurrence's outcome (only while it is still ours to end)."""
        self.db.execute(
            "UPDATE occurrences SET status = ?, reason = ?, answer_file = ?, finished_at = ? "
            "WHERE job_id = ? AND scheduled_at = ? AND status IN (?, ?)",
            (status, reason, answer_file, time.time(), job.id, at, *ACTIVE),
        )

    def abandon_queued(self, reason: str) -> None:
        """This process's queued occurrences will not run: recorded `missed`."""
        pid, _ = _me()
        self.db.execute(
            "UPDATE occurrences SET status = 'missed', reason = ?, finished_at = ? "
            "WHERE status = 'queued' AND pid = ?",
            (reason, time.time(), pid),
        )

    def heartbeat(self) -> None:
        """This process is alive: its claims (and its scheduler row) say so."""
        pid, _ = _me()
        now = time.time()
        self.db.execute(
            "UPDATE occurrences SET heartbeat_at = ? WHERE pid = ? AND status IN (?, ?)",
            (now, pid, *ACTIVE),
        )
        self.db.execute("UPDATE schedulers SET heartbeat_at = ? WHERE pid = ?", (now, pid))

    def recover(self) -> None:
        """End the claims whose process is gone (see the module docstring)."""
        with self.history.transaction() as db:
            self._recover(db, time.time())

    def _recover(self, db: sqlite3.Connection, now: float) -> None:
        rows = db.execute(
            "SELECT job_id, scheduled_at, status, pid, pid_started, heartbeat_at "
            "FROM occurrences WHERE status IN (?, ?)",
            ACTIVE,
        ).fetchall()
        for job_id, at, status, pid, pid_started, heartbeat_at in rows:
            silent = now - (heartbeat_at or 0) > STALE_S
            if process_alive(pid, pid_started) and not silent:
                continue
            why = "was silent" if process_alive(pid, pid_started) else "stopped"
            new, reason = (
                ("interrupted", f"the process running it (pid {pid}) {why} before it ended")
                if status == "running"
                else ("missed", f"the process that claimed it (pid {pid}) {why} before it ran")
            )
            db.execute(
                "UPDATE occurrences SET status = ?, reason = ?, finished_at = ? "
                "WHERE job_id = ? AND scheduled_at = ? AND status = ?",
                (new, reason, now, job_id, at, status),
            )

    def occurrences(self, job: Job, limit: int = 20) -> list[Occurrence]:
        """The job's newest occurrences, newest first."""
        rows = self.db.execute(
            f"SELECT {_OCCURRENCE_COLUMNS} FROM occurrences WHERE job_id = ? "
            "ORDER BY scheduled_at DESC LIMIT ?",
            (job.id, limit),
        )
        return [Occurrence(*row) for row in rows]

    def occurrence(self, job: Job, at: float) -> Occurrence | None:
        """One occurrence, if it is in the ledger."""
        row = self.db.execute(
            f"SELECT {_OCCURRENCE_COLUMNS} FROM occurrences WHERE job_id = ? AND scheduled_at = ?",
            (job.id, at),
        ).fetchone()
        return None if row is None else Occurrence(*row)

    def active(self) -> list[tuple[Job, Occurrence]]:
        """Every occurrence queued or running now, oldest first."""
        rows = self.db.execute(
            f"SELECT {_OCCURRENCE_COLUMNS} FROM occurrences WHERE status IN (?, ?) "
            "ORDER BY scheduled_at",
            ACTIVE,
        ).fetchall()
        found = []
        for row in rows:
            occurrence = Occurrence(*row)
            job = self.job_by_id(occurrence.job_id)
            if job is not None:
                found.append((job, occurrence))
        return found

    # --- the scheduler process ---------------------------------------------------------------

    def register_scheduler(self) -> None:
        """This process is the database's scheduler now."""
        pid, pid_started = _me()
        now = time.time()
        self.db.execute(
            "INSERT OR REPLACE INTO schedulers (id, pid, pid_started, started_at, heartbeat_at) "
            "VALUES (1, ?, ?, ?, ?)",
            (pid, pid_started, now, now),
        )

    def unregister_scheduler(self) -> None:
        """This process stops being the scheduler."""
        self.db.execute("DELETE FROM schedulers WHERE pid = ?", (os.getpid(),))

    def scheduler_row(self) -> SchedulerRow | None:
        """The registered scheduler, if its process still runs."""
        row = self.db.execute(
            "SELECT pid, pid_started, started_at, heartbeat_at FROM schedulers WHERE id = 1"
        ).fetchone()
        if row is None or not process_alive(row[0], row[1]):
            return None
        return SchedulerRow(*row)


class Heartbeat:
    """A thread that keeps this process's claims alive, on its own connection."""

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        with History(self._path) as history:
            ledger = Ledger(history)
            while not self._stop.wait(HEARTBEAT_S):
                ledger.heartbeat()
