"""`agent schedule ...`: scheduled jobs (add, list, show, edit, pause, resume, remove, run-now,
history, export). The scheduler that runs them is `agent scheduler run`."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from agent.cli.common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, setup_logging
from agent.cli.options import json_option, names
from agent.config import load_settings
from agent.errors import ConfigError
from agent.history.store import History
from agent.paths import agent_home, write_atomically
from agent.render import visible
from agent.scheduler.jobs import (
    MISSED_POLICIES,
    OVERLAP_POLICIES,
    Job,
    JobOptions,
    absolute,
    check_job,
)
from agent.scheduler.ledger import Ledger, Occurrence
from agent.scheduler.timing import (
    Trigger,
    dst_notes,
    format_duration,
    local_zone_name,
    next_times,
    parse_duration,
    parse_trigger,
    utc_stamp,
    wall,
)
from agent.tasks import bind, load_task, parse_params

F = TypeVar("F", bound=Callable[..., Any])
NEXT_SHOWN = 5
_FROM_TASK_FILE = ("tools", "time_limit", "code_network")  # a task file's job: None = the file's


@contextmanager
def open_ledger() -> Iterator[Ledger]:
    """The ledger in the run history the settings name."""
    with History(load_settings().history) as history:
        yield Ledger(history)


def _trigger_options(command: F) -> F:
    for option in reversed(
        [
            click.option("--cron", help='a cron expression, e.g. "0 8 * * 1-5"'),
            click.option("--every", help="an interval: 90s, 30m, 2h, 1d (from the epoch, UTC)"),
            click.option("--at", "at", help='once, at a wall time: "2027-01-15 08:00"'),
            click.option("--tz", help="the IANA zone the schedule is read in (default: local)"),
        ]
    ):
        command = option(command)
    return command


def _job_options(command: F) -> F:
    for option in reversed(
        [
            click.option("--model", help="hub id or local directory (default: the settings')"),
            click.option("--model-server", metavar="URL", help="an OpenAI-compatible server"),
            click.option("--thinking/--no-thinking", default=None, help="let the model think"),
            click.option("--seed", type=int, help="seed for reproducible sampling"),
            click.option(
                "--tools",
                callback=names,
                metavar="NAME,NAME",
                help="the tools the job may use (default: the read-only ones)",
            ),
            click.option("--max-steps", type=int, help="rounds of tool calls per run"),
            click.option("--time-limit", help="stop a run after this long (default 10m)"),
            click.option(
                "--code-network/--no-code-network",
                default=None,
                help="let the code interpreter reach the network (default off)",
            ),
            click.option("--output", help="write each successful answer to this file"),
            click.option("--output-dir", help="write each successful answer to a file here"),
            click.option("--overlap", type=click.Choice(OVERLAP_POLICIES), help="default skip"),
            click.option("--missed", type=click.Choice(MISSED_POLICIES), help="default run-once"),
            click.option("--grace", help="how late a missed run may still run (default 1d)"),
            click.option("--on-success", metavar="CMD", help="a shell command after a success"),
            click.option("--on-failure", metavar="CMD", help="a shell command after a failure"),
            click.option(
                "--param",
                "params",
                multiple=True,
                metavar="KEY=VALUE",
                help="a parameter of the job's task file (repeatable; replaces the job's)",
            ),
            click.option("--no-check", is_flag=True, help="skip the tool and model checks"),
        ]
    ):
        command = option(command)
    return command


def _options_from(flags: dict[str, Any], base: JobOptions) -> JobOptions:
    """`base` with the options given on the command line."""
    given: dict[str, Any] = {
        key: flags[key]
        for key in (
            "model",
            "model_server",
            "thinking",
            "seed",
            "tools",
            "max_steps",
            "code_network",
            "overlap",
            "missed",
            "on_success",
            "on_failure",
        )
        if flags.get(key) is not None
    }
    if flags.get("model") and Path(flags["model"]).expanduser().exists():
        given["model"] = absolute(flags["model"])
    for key in ("output", "output_dir"):
        if flags.get(key):
            given[key] = absolute(flags[key])
            given["output_dir" if key == "output" else "output"] = None
    if flags.get("time_limit"):
        given["time_limit_s"] = parse_duration(flags["time_limit"], "--time-limit")
    if flags.get("grace"):
        given["grace_s"] = parse_duration(flags["grace"], "--grace")
    if flags.get("params"):
        given["params"] = tuple(flags["params"])
    return replace(base, **given)


def _task_file_options(options: JobOptions, task_file: Path | None) -> JobOptions:
    """`options` for a job of a task file (`task_file`), or of a task text (None): a file's
    job leaves tools, time limit and code network to the file unless they are given."""
    if task_file is not None:
        return replace(
            options,
            task_file=str(task_file.expanduser().resolve()),
            tools=None,
            time_limit_s=None,
            code_network=None,
        )
    text = JobOptions()
    return replace(
        options,
        task_file=None,
        params=(),
        tools=text.tools if options.tools is None else options.tools,
        time_limit_s=options.time_limit_s or text.time_limit_s,
        code_network=bool(options.code_network),
    )


def _checked(job: Job, no_check: bool) -> None:
    """The job as `add` and `edit` take it: its task file read and its parameters given
    (always), its tools and model tried (unless `no_check`)."""
    check_job(job.name, job.task, job.options)
    task = None
    if job.options.task_file:
        task = load_task(Path(job.options.task_file))
        bind(task, parse_params(job.options.params))
    elif job.options.params:
        raise ConfigError("--param is for a job of a task file (--task FILE)")
    if not no_check:
        from agent.scheduler.preflight import preflight

        click.echo(f"checking job {job.name}: its tools and model…", err=True)
        preflight(job, task)


@click.group("schedule")
def schedule() -> None:
    """Scheduled jobs: agent tasks run by `agent scheduler run`, or by systemd, cron or
    Kubernetes through `schedule export`."""


@schedule.command("add")
@click.argument("name")
@click.argument("task", required=False, default="")
@click.option(
    "-t",
    "--task",
    "task_file",
    type=click.Path(path_type=Path),
    metavar="FILE",
    help="run this task file (TOML), read again at each run, instead of TASK",
)
@_trigger_options
@_job_options
def add(name: str, task: str, task_file: Path | None, cron: str | None, every: str | None,
        at: str | None, tz: str | None, no_check: bool, **flags: Any) -> int:  # fmt: skip
    """Add job NAME that runs TASK, or a task file, on a schedule (exactly one of --cron,
    --every, --at)."""
    setup_logging(False)
    trigger = parse_trigger(cron, every, at, tz or local_zone_name())
    base = _task_file_options(JobOptions(), task_file) if task_file else JobOptions()
    job = Job(id=0, name=name, task=task, trigger=trigger, options=_options_from(flags, base))
    check_job(name, task, job.options)
    with open_ledger() as ledger:
        ledger.check_free(name)
        _checked(job, no_check)
        job = ledger.add_job(name, task, trigger, job.options)
        running = _scheduler_running(ledger)
    click.echo(f"added job {name}: {trigger.describe()}")
    _echo_next(job.trigger, time.time())
    if not running:
        click.echo("the scheduler is not running: start it with 'agent scheduler run'")
    return EXIT_OK


def _echo_next(trigger: Trigger, now: float) -> None:
    times = next_times(trigger, now, NEXT_SHOWN)
    if not times:
        click.echo("it will not run again (its time has passed)")
        return
    click.echo(f"next {len(times)} runs ({trigger.tz}):")
    for moment in times:
        click.echo(f"  {wall(moment, trigger.tz)}   {utc_stamp(moment)}")
    for note in dst_notes(trigger, now, times[-1]):
        click.echo(f"note: {note}")


def _scheduler_running(ledger: Ledger) -> bool:
    from agent.scheduler.daemon import scheduler_running

    return scheduler_running(ledger.history.path)


@schedule.command("edit")
@click.argument("name")
@click.option("--task", help="the new task text (instead of a task file)")
@click.option(
    "--task-file", type=click.Path(path_type=Path), metavar="FILE", help="run this task file"
)
@_trigger_options
@_job_options
def edit(name: str, task: str | None, task_file: Path | None, cron: str | None,
         every: str | None, at: str | None, tz: str | None, no_check: bool,
         **flags: Any) -> int:  # fmt: skip
    """Change job NAME: only the options given change."""
    setup_logging(False)
    if task is not None and task_file is not None:
        raise click.UsageError("give --task TEXT or --task-file FILE, not both")
    with open_ledger() as ledger:
        job = ledger.job(name)
        trigger = job.trigger
        if cron or every or at:
            trigger = parse_trigger(cron, every, at, tz or job.trigger.tz)
        elif tz:
            trigger = parse_trigger(*_trigger_fields(job.trigger), tz)
        base = job.options
        if task_file is not None and base.task_file:  # another file: the options stay
            base = replace(base, task_file=str(task_file.expanduser().resolve()))
        elif task_file is not None or (task is not None and base.task_file):
            base = _task_file_options(base, task_file)
        edited = replace(
            job,
            task="" if task_file is not None else job.task if task is None else task,
            trigger=trigger,
            options=_options_from(flags, base),
        )
        _checked(edited, no_check)
        ledger.replace_job(edited)
    click.echo(f"changed job {name}: {trigger.describe()}")
    _echo_next(trigger, time.time())
    return EXIT_OK


def _trigger_fields(trigger: Trigger) -> tuple[str | None, str | None, str | None]:
    if trigger.kind == "every":
        return None, format_duration(float(trigger.spec)), None
    return (trigger.spec, None, None) if trigger.kind == "cron" else (None, None, trigger.spec)


@schedule.command("list")
@json_option("one JSON object per job")
def list_jobs(as_json: bool) -> int:
    """Every job: its schedule, next run in its zone, and last outcome."""
    now = time.time()
    with open_ledger() as ledger:
        rows = [(job, _next(job, now), _last(ledger, job)) for job in ledger.jobs()]
    if as_json:
        for job, upcoming, last in rows:
            out = {**job.to_dict(), "next_run": upcoming and utc_stamp(upcoming)}
            out["last"] = last and _occurrence_json(last)
            click.echo(json.dumps(out, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        click.echo("no jobs yet: agent schedule add NAME --cron '0 8 * * 1-5' \"task\"")
    for job, upcoming, last in rows:
        state = "paused" if job.paused else (wall(upcoming, job.trigger.tz) if upcoming else "-")
        outcome = f"{last.status} ({utc_stamp(last.scheduled_at)})" if last else "never ran"
        click.echo(f"{job.name}  next: {state}  last: {outcome}  [{job.trigger.describe()}]")
    return EXIT_OK


def _next(job: Job, now: float) -> float | None:
    upcoming = next_times(job.trigger, now, 1)
    return upcoming[0] if upcoming and not job.paused else None


def _last(ledger: Ledger, job: Job) -> Occurrence | None:
    found = ledger.occurrences(job, 1)
    return found[0] if found else None


def _occurrence_json(occurrence: Occurrence) -> dict[str, Any]:
    return {**asdict(occurrence), "scheduled": utc_stamp(occurrence.scheduled_at)}


@schedule.command("show")
@click.argument("name")
@json_option("the job as one JSON object")
def show(name: str, as_json: bool) -> int:
    """Job NAME in full: task, schedule, options, next runs and recent outcomes."""
    now = time.time()
    with open_ledger() as ledger:
        job = ledger.job(name)
        recent = ledger.occurrences(job, NEXT_SHOWN)
    upcoming = [] if job.paused else next_times(job.trigger, now, NEXT_SHOWN)
    if as_json:
        out = {**job.to_dict(), "next_runs": [utc_stamp(t) for t in upcoming]}
        out["recent"] = [_occurrence_json(o) for o in recent]
        click.echo(json.dumps(out, ensure_ascii=False))
        return EXIT_OK
    click.echo(f"job {job.name}{' (paused)' if job.paused else ''}")
    if job.task:
        click.echo(f"  task: {visible(job.task)}")
    click.echo(f"  schedule: {job.trigger.describe()}")
    for key, value in asdict(job.options).items():
        if key in ("task_file", "params") and not value:
            continue
        if key.endswith("_s"):
            key, value = key[:-2], None if value is None else format_duration(value)
        if isinstance(value, tuple):
            value = ", ".join(value) or "none"
        if value is None and job.options.task_file and key in _FROM_TASK_FILE:
            value = "the task file's"
        click.echo(
            f"  {key.replace('_', '-')}: {visible(str(value)) if value is not None else '-'}"
        )
    if not job.paused:
        _echo_next(job.trigger, now)
    for occurrence in recent:
        click.echo(f"  {_occurrence_line(job, occurrence)}")
    return EXIT_OK


def _occurrence_line(job: Job, occurrence: Occurrence) -> str:
    reason = f": {visible(occurrence.reason)}" if occurrence.reason else ""
    run = f"  run {occurrence.run_id}" if occurrence.run_id else ""
    trigger = "" if occurrence.trigger == "schedule" else f" ({occurrence.trigger})"
    task = f"  task sha256 {occurrence.task_sha256[:12]}" if occurrence.task_sha256 else ""
    return (
        f"{wall(occurrence.scheduled_at, job.trigger.tz)}  {occurrence.status}{trigger}"
        f"{reason}{run}{task}"
    )


@schedule.command("pause")
@click.argument("name")
def pause(name: str) -> int:
    """Stop running job NAME until `resume` (slots in between are not made up)."""
    with open_ledger() as ledger:
        ledger.set_paused(ledger.job(name), True)
    click.echo(f"paused job {name}")
    return EXIT_OK


@schedule.command("resume")
@click.argument("name")
def resume(name: str) -> int:
    """Run job NAME on its schedule again, from now on."""
    with open_ledger() as ledger:
        job = ledger.job(name)
        ledger.set_paused(job, False)
    click.echo(f"resumed job {name}")
    _echo_next(job.trigger, time.time())
    return EXIT_OK


@schedule.command("remove")
@click.argument("name")
def remove(name: str) -> int:
    """Delete job NAME and its ledger; its runs stay in `agent runs`."""
    with open_ledger() as ledger:
        ledger.remove_job(ledger.job(name))
    click.echo(f"removed job {name}")
    return EXIT_OK


@schedule.command("run-now")
@click.argument("name")
@click.option(
    "--model-server", metavar="URL", help="use this model server for this run (a shared one)"
)
@click.option(
    "--occurrence",
    metavar="latest|TIME",
    help="claim this scheduled slot (what systemd, cron and CronJobs call); default: a manual "
    "run now",
)
def run_now_command(name: str, model_server: str | None, occurrence: str | None) -> int:
    """Run job NAME now, claimed in the ledger like the scheduler's runs (exit 0 unless the
    run failed)."""
    from agent.scheduler.run_now import run_now

    setup_logging(False)
    with open_ledger() as ledger:
        job = ledger.job(name)
        if model_server:
            job = replace(job, options=replace(job.options, model_server=model_server))
        result = run_now(ledger, job, occurrence)
    run = f" (run {result.run_id}: agent runs show {result.run_id})" if result.run_id else ""
    message = f": {visible(result.message)}" if result.message else ""
    click.echo(f"{name}: {result.status}{message}{run}")
    if result.status == "interrupted":
        return EXIT_CANCELLED
    return EXIT_FAILED if result.status in ("failed", "timed_out") else EXIT_OK


@schedule.command("history")
@click.argument("name")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@json_option("one JSON object per occurrence")
def history(name: str, limit: int, as_json: bool) -> int:
    """Job NAME's occurrences, newest first: status, reason and run."""
    with open_ledger() as ledger:
        job = ledger.job(name)
        found = ledger.occurrences(job, limit)
    for occurrence in found:
        if as_json:
            click.echo(json.dumps(_occurrence_json(occurrence), ensure_ascii=False))
        else:
            click.echo(_occurrence_line(job, occurrence))
    if not found and not as_json:
        click.echo(f"job {name} has not come due yet")
    return EXIT_OK


@schedule.command("export")
@click.argument("name")
@click.option("--systemd", "kind", flag_value="systemd", help="a service and a timer")
@click.option("--cron", "kind", flag_value="cron", help="a crontab line")
@click.option("--kubernetes", "kind", flag_value="kubernetes", help="a CronJob manifest")
@click.option("--image", default="agent:latest", show_default=True, help="CronJob image")
@click.option("--model-server", metavar="URL", help="CronJob: the shared model server")
@click.option("--out", type=click.Path(path_type=Path), help="write the files into this folder")
def export(
    name: str, kind: str | None, image: str, model_server: str | None, out: Path | None
) -> int:
    """Job NAME for an outside scheduler; each fires `agent schedule run-now NAME
    --occurrence latest`, which claims the slot in this ledger."""
    from agent.scheduler import export as exports

    if kind is None:
        raise click.UsageError("give one of --systemd, --cron or --kubernetes")
    with open_ledger() as ledger:
        job = ledger.job(name)
        db = ledger.history.path
    command = [sys.executable, "-m", "agent"]
    env = {"AGENT_HOME": str(agent_home()), "AGENT_HISTORY": str(db)}
    if kind == "systemd":
        files = exports.systemd_units(job, command, env)
    elif kind == "cron":
        files = {f"agent-job-{name}.crontab": exports.crontab_line(job, command, env)}
    else:
        files = {f"agent-job-{name}.yaml": exports.kubernetes_cronjob(job, image, model_server)}
    if out is None:
        for filename, text in files.items():
            click.echo(f"# {filename}\n{text.rstrip()}\n" if len(files) > 1 else text.rstrip())
        return EXIT_OK
    out.mkdir(parents=True, exist_ok=True)
    for filename, text in files.items():
        write_atomically(out / filename, text)
        click.echo(f"wrote {out / filename}")
    if kind == "systemd":
        click.echo(
            "install: cp them to ~/.config/systemd/user/, then systemctl --user "
            f"enable --now agent-job-{shlex.quote(name)}.timer"
        )
    return EXIT_OK
