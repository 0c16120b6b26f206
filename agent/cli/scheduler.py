"""`agent scheduler run` (the foreground process systemd, a container or a terminal runs) and
`agent scheduler status`."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import click

from agent.cli.common import EXIT_OK, setup_logging
from agent.cli.options import json_option
from agent.cli.schedule import open_ledger
from agent.config import load_settings
from agent.scheduler.timing import next_times, utc_stamp, wall


@click.group("scheduler")
def scheduler() -> None:
    """The process that runs the scheduled jobs (one per run history database)."""


@scheduler.command("run")
@click.option("--debug", is_flag=True, help="verbose logs on stderr")
def run(debug: bool) -> int:
    """Run due jobs until stopped (Ctrl-C or SIGTERM stop it, and the run in progress)."""
    from agent.scheduler.daemon import Scheduler

    setup_logging(debug)
    daemon = Scheduler(db=load_settings().history)

    def stop(signum: int, frame: Any) -> None:
        first = not daemon.stopping.is_set()
        daemon.stopping.set()
        if first and daemon.running:
            raise KeyboardInterrupt  # ends the run in progress as `interrupted`

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    daemon.serve()
    return EXIT_OK


@scheduler.command("status")
@json_option("one JSON object")
def status(as_json: bool) -> int:
    """Whether a scheduler is running on this database, what it runs, and what is next."""
    from agent.scheduler.daemon import scheduler_running

    now = time.time()
    with open_ledger() as ledger:
        row = ledger.scheduler_row()
        up = scheduler_running(ledger.history.path)
        active = ledger.active()
        upcoming = sorted(
            (times[0], job)
            for job in ledger.jobs()
            if not job.paused and (times := next_times(job.trigger, now, 1))
        )
    if as_json:
        out = {
            "running": up,
            "pid": row.pid if row and up else None,
            "since": utc_stamp(row.started_at) if row and up else None,
            "active": [
                {"job": job.name, "scheduled": utc_stamp(o.scheduled_at), "status": o.status}
                for job, o in active
            ],
            "next": [{"job": job.name, "at": utc_stamp(at)} for at, job in upcoming[:5]],
        }
        click.echo(json.dumps(out))
        return EXIT_OK
    if up and row:
        click.echo(f"scheduler running: pid {row.pid}, since {utc_stamp(row.started_at)}")
    else:
        click.echo("scheduler not running: start it with 'agent scheduler run'")
    for job, occurrence in active:
        click.echo(f"  {occurrence.status}: {job.name} ({utc_stamp(occurrence.scheduled_at)})")
    for at, job in upcoming[:5]:
        click.echo(f"  next: {job.name} at {wall(at, job.trigger.tz)}")
    return EXIT_OK
