"""The schedule exports: systemd checks the units, cronsim and YAML read the others back."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from cronsim import CronSim

from agent.errors import ConfigError
from agent.scheduler.export import crontab_line, kubernetes_cronjob, systemd_units
from agent.scheduler.jobs import Job, JobOptions
from agent.scheduler.timing import Trigger, parse_trigger

COMMAND = [sys.executable, "-m", "agent"]
ENV = {"AGENT_HOME": "/srv/agent home/100%"}
BASE = datetime(2027, 3, 22, tzinfo=timezone.utc).timestamp()  # a week spanning a clock change
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def make_job(
    name: str,
    cron: str | None = None,
    every: str | None = None,
    at: str | None = None,
    paused: bool = False,
    **options: object,
) -> Job:
    trigger = parse_trigger(cron, every, at, "Europe/Berlin")
    return Job(
        id=1,
        name=name,
        task="summarise",
        trigger=trigger,
        options=JobOptions(**options),  # type: ignore[arg-type]
        paused=paused,
    )


def run_now(name: str) -> list[str]:
    return ["schedule", "run-now", name, "--occurrence", "latest"]


def first_times(trigger: Trigger, count: int) -> list[float]:
    times = trigger.times_after(BASE)
    return [next(times) for _ in range(count)]


def timer_values(units: dict[str, str], key: str) -> list[str]:
    timer = next(text for name, text in units.items() if name.endswith(".timer"))
    return [line.split("=", 1)[1] for line in timer.splitlines() if line.startswith(key + "=")]


def systemd_elapses(calendars: list[str], count: int) -> list[float]:
    """The first `count` times after BASE that any of the calendar events fires, per systemd."""
    found: set[float] = set()
    for calendar in calendars:
        result = subprocess.run(
            ["systemd-analyze", "calendar", f"--iterations={count}", f"--base-time=@{BASE:.0f}"]
            + [calendar],
            capture_output=True,
            text=True,
            env={**os.environ, "TZ": "UTC"},
            check=True,
        )
        stamps = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", result.stdout)
        found.update(
            datetime.fromisoformat(stamp).replace(tzinfo=timezone.utc).timestamp()
            for stamp in stamps
        )
    return sorted(found)[:count]


@needs_systemd
def test_systemd_verify_accepts_the_units(tmp_path: Path) -> None:
    jobs = [
        make_job("digest", cron="0 8 * * 1-5"),
        make_job("half_hourly", every="30m"),
        make_job("first-or-monday", cron="0 9 1 * 1"),
        make_job("once", at="2027-01-15 08:00"),
        make_job("uneven", every="90m"),
    ]
    names = []
    for job in jobs:
        for name, text in systemd_units(job, COMMAND, ENV).items():
            (tmp_path / name).write_text(text)
            names.append(name)
    # a command path with a space: verify fails if ExecStart's quoting splits it
    spaced = tmp_path / "my env" / "python"
    spaced.parent.mkdir()
    spaced.symlink_to(sys.executable)
    for name, text in systemd_units(
        make_job("spaced", cron="*/5 * * * *"), [str(spaced)], {}
    ).items():
        (tmp_path / name).write_text(text)
        names.append(name)

    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / name) for name in names)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if any(name.rsplit(".", 1)[0] in line for name in names)
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in ours if re.search("Failed|Invalid|Unknown|not exec", line)]


def test_service_runs_the_occurrence_with_the_environment() -> None:
    job = make_job("digest", cron="0 8 * * 1-5", time_limit_s=300.0)
    units = systemd_units(job, COMMAND, ENV)
    assert set(units) == {"agent-job-digest.service", "agent-job-digest.timer"}
    service = units["agent-job-digest.service"]
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split() == [
        *COMMAND,
        *run_now("digest"),
    ]
    assert 'Environment="AGENT_HOME=/srv/agent home/100%%"' in service  # % is a specifier
    assert "Type=oneshot" in service and "KillMode=mixed" in service
    start_timeout = re.search(r"^TimeoutStartSec=(\d+)$", service, re.M)
    assert start_timeout and 300 < int(start_timeout.group(1)) <= 600
    timer = units["agent-job-digest.timer"]
    assert "WantedBy=timers.target" in timer and "AccuracySec=1s" in timer


@needs_systemd
@pytest.mark.parametrize(
    ("cron", "every", "calendars"),
    [
        ("0 8 * * 1-5", None, ["Mon..Fri *-*-* 08:00:00 Europe/Berlin"]),
        (None, "30m", ["*-*-* *:00/30:00 UTC"]),
        ("0 9 1 * 1", None, ["*-*-01 09:00:00 Europe/Berlin", "Mon *-*-* 09:00:00 Europe/Berlin"]),
        (None, "2h", ["*-*-* 00/2:00:00 UTC"]),
        ("*/20 9-17 L * 5L,0", None, None),  # last day, last Friday, Sundays
    ],
)
def test_timer_fires_when_the_trigger_does(
    cron: str | None, every: str | None, calendars: list[str] | None
) -> None:
    job = make_job("digest", cron=cron, every=every)
    found = timer_values(systemd_units(job, COMMAND, ENV), "OnCalendar")
    if calendars is not None:
        assert found == calendars
    assert systemd_elapses(found, 40) == first_times(job.trigger, 40)


def test_timer_for_an_at_job_and_an_uneven_every() -> None:
    once = systemd_units(make_job("once", at="2027-01-15 08:00"), COMMAND, ENV)
    assert timer_values(once, "OnCalendar") == ["2027-01-15 08:00:00 Europe/Berlin"]
    uneven = systemd_units(make_job("uneven", every="90m"), COMMAND, ENV)
    assert timer_values(uneven, "OnCalendar") == []
    assert timer_values(uneven, "OnUnitActiveSec") == ["5400"]


@pytest.mark.parametrize(("missed", "persistent"), [("run-once", "true"), ("skip", "false")])
def test_persistent_follows_the_missed_policy(missed: str, persistent: str) -> None:
    units = systemd_units(make_job("digest", cron="0 8 * * *", missed=missed), COMMAND, ENV)
    assert timer_values(units, "Persistent") == [persistent]


@pytest.mark.parametrize("name", ["daily digest", "../x", "a.b", ""])
def test_names_that_cannot_be_unit_names_are_refused(name: str) -> None:
    job = make_job("ok", cron="0 8 * * *")
    bad = Job(id=1, name=name, task=job.task, trigger=job.trigger)
    with pytest.raises(ConfigError):
        systemd_units(bad, COMMAND, ENV)
    with pytest.raises(ConfigError):
        crontab_line(bad, COMMAND, ENV)


def parse_crontab(block: str) -> tuple[str, str, list[str]]:
    """(CRON_TZ, the five fields, the command as the shell splits it after cron's % rule)."""
    lines = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2 and lines[0].startswith("CRON_TZ=")
    fields = lines[1].split()[:5]
    command = lines[1].split(None, 5)[5]
    assert re.search(r"(?<!\\)%", command) is None  # a bare % would end the command
    return lines[0].split("=", 1)[1], " ".join(fields), shlex.split(command.replace("\\%", "%"))


@pytest.mark.parametrize(
    ("cron", "every", "at"),
    [
        ("0 8 * * 1-5", None, None),
        ("0 9 1 * 1", None, None),
        (None, "15m", None),
        (None, "6h", None),
        (None, None, "2027-06-15 08:30"),
    ],
)
def test_crontab_line_fires_when_the_trigger_does(
    cron: str | None, every: str | None, at: str | None
) -> None:
    job = make_job("digest", cron=cron, every=every, at=at)
    cron_tz, fields, command = parse_crontab(crontab_line(job, COMMAND, ENV))
    start = datetime.fromtimestamp(BASE, ZoneInfo(cron_tz))
    count = 1 if at else 12
    fires = [moment.timestamp() for moment in islice(CronSim(fields, start), count)]
    assert fires == first_times(job.trigger, count)
    assert command == [
        "AGENT_HOME=/srv/agent home/100%",
        *COMMAND,
        *run_now("digest"),
    ]


def test_crontab_at_line_says_the_ledger_runs_it_once() -> None:
    block = crontab_line(make_job("once", at="2027-01-15 08:00"), COMMAND, {})
    assert "0 8 15 JAN *" in block
    assert any(line.startswith("#") and "once" in line for line in block.splitlines())


@pytest.mark.parametrize(("cron", "every"), [(None, "7m"), (None, "90s"), ("0 8 L * *", None)])
def test_schedules_crontab_cannot_hold_are_refused(cron: str | None, every: str | None) -> None:
    with pytest.raises(ConfigError, match="--systemd"):
        crontab_line(make_job("digest", cron=cron, every=every), COMMAND, ENV)


def test_kubernetes_cronjob() -> None:
    job = make_job("Daily_digest", cron="0 8 * * 1-5", time_limit_s=600.0)
    document = yaml.safe_load(kubernetes_cronjob(job, "ghcr.io/me/agent:1", "http://llm:8000"))
    assert document["apiVersion"] == "batch/v1" and document["kind"] == "CronJob"
    assert document["metadata"]["name"] == "agent-job-daily-digest"
    spec = document["spec"]
    assert spec["schedule"] == "0 8 * * 1-5" and spec["timeZone"] == "Europe/Berlin"
    assert spec["suspend"] is False
    assert spec["successfulJobsHistoryLimit"] == spec["failedJobsHistoryLimit"] == 3
    job_spec = spec["jobTemplate"]["spec"]
    assert job_spec["backoffLimit"] == 0 and 600 < job_spec["activeDeadlineSeconds"] <= 900
    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/me/agent:1"
    assert container["args"] == [
        *run_now("Daily_digest"),
        "--model-server",
        "http://llm:8000",
    ]
    assert {"name": "AGENT_HOME", "value": "/data"} in container["env"]
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount["mountPath"] == "/data" and mount["name"] == volume["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == "agent-data"


@pytest.mark.parametrize(("overlap", "policy"), [("skip", "Forbid"), ("queue", "Allow")])
def test_kubernetes_concurrency_follows_overlap(overlap: str, policy: str) -> None:
    job = make_job("digest", cron="0 8 * * *", overlap=overlap)
    assert yaml.safe_load(kubernetes_cronjob(job, "img", None))["spec"]["concurrencyPolicy"] == (
        policy
    )


@pytest.mark.parametrize(("missed", "deadline"), [("run-once", 7200), ("skip", 60)])
def test_kubernetes_deadline_follows_missed(missed: str, deadline: int) -> None:
    job = make_job("digest", cron="0 8 * * *", missed=missed, grace_s=7200.0, paused=True)
    spec = yaml.safe_load(kubernetes_cronjob(job, "img", None))["spec"]
    assert spec["startingDeadlineSeconds"] == deadline
    assert spec["suspend"] is True
    assert (
        "--model-server"
        not in spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    )


def test_kubernetes_every_and_at() -> None:
    every = yaml.safe_load(kubernetes_cronjob(make_job("tick", every="2h"), "img", None))
    assert every["spec"]["schedule"] == "0 */2 * * *" and every["spec"]["timeZone"] == "UTC"
    once = yaml.safe_load(kubernetes_cronjob(make_job("once", at="2027-01-15 08:00"), "img", None))
    assert once["spec"]["schedule"] == "0 8 15 JAN *"
    with pytest.raises(ConfigError):
        kubernetes_cronjob(make_job("odd", every="7m"), "img", None)
