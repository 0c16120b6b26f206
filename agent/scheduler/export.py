"""A job as a systemd timer, a crontab entry or a Kubernetes CronJob, for hosts that schedule.

Each export calls `agent schedule run-now NAME --occurrence latest` when it fires. That command
claims the occurrence in the same ledger as `agent scheduler run`, so a slot runs once however
many schedulers fire it, and the job's history stays in one place. The functions return text;
they write nothing. One difference stays: in the hour a spring clock change skips, systemd
skips a cron run that `agent scheduler run` makes when the hour ends.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import yaml
from cronsim import CronSim

from agent.errors import ConfigError
from agent.scheduler.jobs import Job, job_time_limit
from agent.scheduler.timing import Trigger, zone
from agent.tasks import load_task

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_WEEKDAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DEADLINE_MARGIN_S = 60  # time a run gets past its own limit before the host kills it
_SKIP_DEADLINE_S = 60  # how late Kubernetes may still start a run when missed runs are skipped


def systemd_units(job: Job, command: list[str], env: dict[str, str]) -> dict[str, str]:
    """`agent-job-NAME.service` (oneshot, runs the occurrence) and `.timer` (when), by name."""
    unit = f"agent-job-{_checked_name(job.name)}"
    words = [*command, *_run_now_args(job.name)]
    service = [
        "[Unit]",
        f"Description=agent job {job.name}",
        "",
        "[Service]",
        "Type=oneshot",
        f"ExecStart={' '.join(_systemd_word(word) for word in words)}",
        *(f"Environment={_systemd_env(key, value)}" for key, value in env.items()),
        "KillMode=mixed",
        f"TimeoutStartSec={_deadline(job)}",
        "TimeoutStopSec=30",
    ]
    timer = [
        "[Unit]",
        f"Description=when agent job {job.name} runs",
        "",
        "[Timer]",
        *_timer_lines(job.trigger),
        "AccuracySec=1s",
        f"Persistent={'true' if job.options.missed == 'run-once' else 'false'}",
        f"Unit={unit}.service",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return {f"{unit}.service": _lines(service), f"{unit}.timer": _lines(timer)}


def crontab_line(job: Job, command: list[str], env: dict[str, str]) -> str:
    """A crontab block: comments, `CRON_TZ=` (cronie's) and the line that runs the job."""
    _checked_name(job.name)
    words = [*command, *_run_now_args(job.name)]
    assignments = [f"{_env_key(key)}={shlex.quote(value)}" for key, value in env.items()]
    shell = " ".join([*assignments, *(shlex.quote(word) for word in words)])
    if "\n" in shell:
        raise ConfigError("the command and environment for a crontab line must be one line")
    lines = [f"# agent job {job.name}"]
    if job.trigger.kind == "at":
        lines.append("# a crontab line fires every year; the ledger runs the job only once")
    shell = shell.replace("%", "\\%")  # cron reads a bare % as a line break
    lines += [f"CRON_TZ={_cron_zone(job.trigger)}", f"{_cron_schedule(job.trigger)} {shell}"]
    return _lines(lines)


def kubernetes_cronjob(job: Job, image: str, model_server: str | None) -> str:
    """A `batch/v1` CronJob (YAML) running the image's `agent` with the PVC `agent-data`."""
    name = f"agent-job-{job.name.lower().replace('_', '-')}"
    if not _NAME.fullmatch(job.name) or not _K8S_NAME.fullmatch(name) or len(name) > 52:
        raise ConfigError(
            f"job name {job.name!r} cannot name a CronJob: use at most 42 letters, digits "
            "or '-', starting and ending with a letter or digit"
        )
    schedule = _cron_schedule(job.trigger)
    _k8s_cron_check(job.trigger)
    args = _run_now_args(job.name)
    if model_server:
        args += ["--model-server", model_server]
    container = {
        "name": "agent",
        "image": image,
        "args": args,
        "env": [{"name": "AGENT_HOME", "value": "/data"}],
        "volumeMounts": [{"name": "agent-data", "mountPath": "/data"}],
    }
    pod = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [{"name": "agent-data", "persistentVolumeClaim": {"claimName": "agent-data"}}],
    }
    missed_deadline = max(int(job.options.grace_s), 10)  # the controller looks every 10 s
    spec = {
        "schedule": schedule,
        "timeZone": _cron_zone(job.trigger),
        "concurrencyPolicy": "Forbid" if job.options.overlap == "skip" else "Allow",
        "startingDeadlineSeconds": (
            missed_deadline if job.options.missed == "run-once" else _SKIP_DEADLINE_S
        ),
        "suspend": job.paused,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": _deadline(job),
                "template": {"spec": pod},
            }
        },
    }
    document = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "agent"}},
        "spec": spec,
    }
    note = "# fires every year; the ledger runs the job only once\n"
    text = yaml.safe_dump(document, sort_keys=False)
    return (note if job.trigger.kind == "at" else "") + text


def _run_now_args(name: str) -> list[str]:
    return ["schedule", "run-now", name, "--occurrence", "latest"]


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"job name {name!r}: an export needs letters, digits, '-' or '_' only")
    return name


def _env_key(key: str) -> str:
    if not _ENV_KEY.fullmatch(key):
        raise ConfigError(f"environment variable name {key!r}: use letters, digits and '_'")
    return key


def _deadline(job: Job) -> int:
    """A run's time limit and a margin; a task file's limit as the file says it now."""
    task = load_task(Path(job.options.task_file)) if job.options.task_file else None
    return math.ceil(job_time_limit(job, task)) + _DEADLINE_MARGIN_S


def _lines(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _systemd_word(word: str) -> str:
    """One ExecStart= word: `%` and `$` doubled, quoted when it holds what systemd splits on."""
    if "\n" in word:
        raise ConfigError(f"command word {word!r}: a unit file cannot hold a line break")
    word = word.replace("%", "%%").replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _systemd_env(key: str, value: str) -> str:
    if "\n" in value:
        raise ConfigError(f"environment variable {key}: a unit file cannot hold a line break")
    pair = f"{_env_key(key)}={value}".replace("%", "%%")
    return '"' + pair.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _timer_lines(trigger: Trigger) -> list[str]:
    """`OnCalendar=` lines (several are or-ed), or monotonic timers for an uneven `--every`."""
    if trigger.kind == "at":
        moment = datetime.fromisoformat(trigger.spec)
        return [f"OnCalendar={moment:%Y-%m-%d %H:%M}:00 {trigger.tz}"]
    if trigger.kind == "every":
        seconds = int(float(trigger.spec))
        clock = _every_clock(seconds)
        if clock is None:  # not aligned to the epoch slots; `--occurrence latest` still is
            return [f"OnActiveSec={seconds}", f"OnUnitActiveSec={seconds}"]
        return [f"OnCalendar=*-*-* {clock} UTC"]
    return [f"OnCalendar={spec} {trigger.tz}" for spec in _cron_calendars(trigger.spec)]


def _every_clock(seconds: int) -> str | None:
    """The `HH:MM:SS` pattern hitting every multiple of `seconds` since the epoch, if any."""
    if seconds == 86400:
        return "00:00:00"
    if seconds % 3600 == 0 and 86400 % seconds == 0:
        return f"00/{seconds // 3600}:00:00"
    if seconds % 60 == 0 and 3600 % seconds == 0:
        return f"*:00/{seconds // 60}:00"
    if 60 % seconds == 0:
        return f"*:*:00/{seconds}"
    return None


def _cron_calendars(expr: str) -> list[str]:
    """A 5-field cron expression as systemd calendar events, without the zone."""
    cron = _parse_cron(expr)
    clock = f"{_numbers(cron.hours, range(24))}:{_numbers(cron.minutes, range(60))}:00"
    months = _numbers(cron.months, range(1, 13))
    dom = _dom_parts(cron.days)
    dow = _dow_parts(cron.weekdays)
    if cron.day_and:
        pairs = []
        for weekday, days in dow:
            if days is None:
                pairs += [(weekday, part) for part in dom]
            elif dom == ["-*"]:
                pairs.append((weekday, days))
            else:
                raise ConfigError(f"cron {expr!r}: systemd cannot combine these day fields")
    else:  # cron runs on days matching either field
        pairs = [("", part) for part in dom] + [(w, days or "-*") for w, days in dow]
    events = (f"{weekday} *-{months}{days} {clock}".lstrip() for weekday, days in pairs)
    return list(dict.fromkeys(events))


def _parse_cron(expr: str) -> CronSim:
    if len(expr.split()) != 5:
        raise ConfigError(f"cron {expr!r}: an export needs five fields")
    return CronSim(expr, datetime(2000, 1, 1))


def _numbers(values: set[int], full: range) -> str:
    """`*`, or a list such as `00,15,30` with runs of three or more as `09..17`."""
    ordered = sorted(values)
    return "*" if ordered == list(full) else _ranges(ordered, lambda value: f"{value:02d}")


def _ranges(ordered: list[int], label: Callable[[int], str]) -> str:
    """Sorted values as systemd lists them: `a,b` and, for runs of three or more, `a..c`."""
    runs: list[list[int]] = []
    for value in ordered:
        if runs and runs[-1][-1] == value - 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    words = [
        f"{label(run[0])}..{label(run[-1])}" if len(run) > 2 else ",".join(map(label, run))
        for run in runs
    ]
    return ",".join(words)


def _dom_parts(days: set[int]) -> list[str]:
    """The day-of-month field as date tails: `-01,15`, `~01` (the last day), `-*`."""
    if CronSim.LAST_WEEKDAY in days:
        raise ConfigError("cron day LW (the last weekday) has no systemd form; list the days")
    numbers = {day for day in days if day > 0}
    parts = [f"-{_numbers(numbers, range(1, 32))}"] if numbers else []
    return parts + (["~01"] if CronSim.LAST in days else [])


def _dow_parts(weekdays: set[int | tuple[int, int]]) -> list[tuple[str, str | None]]:
    """The weekday field as (weekdays, date tail or None); `5#2`, `5L` bring their own days."""
    plain = {day % 7 for day in weekdays if isinstance(day, int)}
    parts: list[tuple[str, str | None]] = []
    if plain:
        names = "" if len(plain) == 7 else _weekday_names(plain)
        parts.append((names, None))
    for item in sorted(day for day in weekdays if isinstance(day, tuple)):
        day, nth = item
        name = _WEEKDAYS[day % 7]
        if nth == CronSim.LAST:
            parts.append((name, "~07/1"))
        else:
            parts.append((name, f"-{7 * nth - 6:02d}..{min(7 * nth, 31):02d}"))
    return parts


def _weekday_names(days: set[int]) -> str:
    monday_first = sorted((day - 1) % 7 for day in days)  # systemd's week starts on Monday
    return _ranges(monday_first, lambda day: _WEEKDAYS[(day + 1) % 7])


def _cron_schedule(trigger: Trigger) -> str:
    """Five cron fields: the expression, `--every` when it fits the hour or day, `--at`."""
    if trigger.kind == "at":
        moment = datetime.fromisoformat(trigger.spec)
        return f"{moment.minute} {moment.hour} {moment.day} {_MONTHS[moment.month - 1]} *"
    if trigger.kind == "cron":
        cron = _parse_cron(trigger.spec)
        special = {CronSim.LAST, CronSim.LAST_WEEKDAY}
        if cron.days & special or any(isinstance(day, tuple) for day in cron.weekdays):
            raise ConfigError(
                f"cron {trigger.spec!r}: crontab and Kubernetes have no L, LW or #; use --systemd"
            )
        return trigger.spec
    seconds = int(float(trigger.spec))
    if seconds % 3600 == 0 and 86400 % seconds == 0:
        hours = seconds // 3600
        return "0 0 * * *" if hours == 24 else f"0 */{hours} * * *"
    if seconds % 60 == 0 and 3600 % seconds == 0:
        minutes = seconds // 60
        return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
    raise ConfigError(
        f"every {seconds} s cannot be a crontab line or CronJob schedule (that needs whole "
        "minutes dividing an hour or whole hours dividing a day); use --systemd"
    )


def _cron_zone(trigger: Trigger) -> str:
    """The zone cron reads the fields in: the job's, or UTC where `--every` counts its slots."""
    zone(trigger.tz)
    return "UTC" if trigger.kind == "every" else trigger.tz


def _k8s_cron_check(trigger: Trigger) -> None:
    """What Kubernetes' cron parser reads differently from cron: weekday 7, `*/N` day fields."""
    if trigger.kind != "cron":
        return
    _minute, _hour, dom, _month, dow = trigger.spec.split()
    if re.search(r"(?<!\d)7(?!\d)", dow):
        raise ConfigError(f"cron {trigger.spec!r}: Kubernetes wants Sunday as 0, not 7")
    starred = [field.startswith("*") and field != "*" for field in (dom, dow)]
    if any(starred) and "*" not in (dom, dow):
        raise ConfigError(
            f"cron {trigger.spec!r}: Kubernetes reads a '*/N' day field with a restricted "
            "other day field as either-day, not both; list the days instead"
        )
