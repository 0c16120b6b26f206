"""A scheduled job: its name, task, trigger and options, and the settings its runs get.

Defaults, for a job nobody watches: the read-only tools only, the code interpreter's network
off, ten minutes per run, no approval prompt ever (a job cannot ask anyone). A run that would
overlap the job's previous one is skipped (as Kubernetes' `Forbid` and systemd do), and runs
missed while the scheduler was down run once when it is back within a day (systemd's
`Persistent=true`, APScheduler's coalescing with a grace time).

A job may run a task file instead of a task text: the file is read again at each run, its
settings come between the environment and the job's own options, and the calls it asks
approval for are refused (there is no one to ask).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.config import Settings, load_settings
from agent.errors import ConfigError
from agent.loop.approval import READ_ONLY_SERVERS, READ_ONLY_TOOLS
from agent.scheduler.timing import Trigger
from agent.tasks import Task, task_settings

DEFAULT_TOOLS = (*READ_ONLY_SERVERS, *READ_ONLY_TOOLS)
DEFAULT_TIME_LIMIT_S = 600.0
DEFAULT_GRACE_S = 86400.0
OVERLAP_POLICIES = ("skip", "queue")
MISSED_POLICIES = ("run-once", "skip")


@dataclass(frozen=True)
class JobOptions:
    """How a job runs. `None` model settings leave the config file and environment in force;
    a task file's job has `None` tools, time limit and code network unless given, so the file's
    (else the defaults above) hold."""

    model: str | None = None
    model_server: str | None = None
    thinking: bool | None = None
    seed: int | None = None
    tools: tuple[str, ...] | None = DEFAULT_TOOLS
    max_steps: int | None = None
    time_limit_s: float | None = DEFAULT_TIME_LIMIT_S
    code_network: bool | None = False
    output: str | None = None  # one file, replaced by each successful run's answer
    output_dir: str | None = None  # one file per run
    overlap: str = "skip"
    missed: str = "run-once"
    grace_s: float = DEFAULT_GRACE_S
    on_success: str | None = None
    on_failure: str | None = None
    task_file: str | None = None  # a task file (absolute), read at each run instead of the task
    params: tuple[str, ...] = ()  # its parameters, KEY=VALUE


@dataclass(frozen=True)
class Job:
    """A job as the ledger stores it."""

    id: int
    name: str
    task: str
    trigger: Trigger
    options: JobOptions = field(default_factory=JobOptions)
    paused: bool = False
    created_at: float = 0.0

    def spec_json(self) -> str:
        """Task, trigger and options as the `jobs.spec` column holds them."""
        return json.dumps(
            {"task": self.task, "trigger": asdict(self.trigger), "options": asdict(self.options)}
        )

    def to_dict(self) -> dict[str, Any]:
        """The job for `--json` output."""
        return {
            "name": self.name,
            "task": self.task,
            "trigger": asdict(self.trigger),
            "options": asdict(self.options),
            "paused": self.paused,
            "created_at": self.created_at,
        }


def job_from_row(row: tuple[Any, ...]) -> Job:
    """A job from `SELECT id, name, created_at, paused, spec FROM jobs`."""
    job_id, name, created_at, paused, spec = row
    data = json.loads(spec)
    options = data["options"]
    for key in ("tools", "params"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    return Job(
        id=job_id,
        name=name,
        task=data["task"],
        trigger=Trigger(**data["trigger"]),
        options=JobOptions(**options),
        paused=bool(paused),
        created_at=created_at,
    )


def check_job(name: str, task: str, options: JobOptions) -> None:
    """One-line errors for what no run of the job could get past."""
    if not name.strip() or any(c in name for c in "/\\") or name != name.strip():
        raise ConfigError(f"job name {name!r}: use letters, digits, '-' or '_' (no slashes)")
    if not task.strip() and not options.task_file:
        raise ConfigError("the job has no task: give the task text after the name, or --task FILE")
    if task.strip() and options.task_file:
        raise ConfigError("give the task text or a task file (--task FILE), not both")
    if options.overlap not in OVERLAP_POLICIES:
        raise ConfigError(f"--overlap must be one of {', '.join(OVERLAP_POLICIES)}")
    if options.missed not in MISSED_POLICIES:
        raise ConfigError(f"--missed must be one of {', '.join(MISSED_POLICIES)}")
    if options.output and options.output_dir:
        raise ConfigError("give --output (one file) or --output-dir (a file per run), not both")
    if options.time_limit_s is not None and options.time_limit_s <= 0:
        raise ConfigError("--time-limit must be above zero")


def absolute(path: str | None) -> str | None:
    """A user's path as an absolute one (the scheduler runs from another directory)."""
    return None if path is None else str(Path(path).expanduser().resolve())


def job_settings(job: Job, task: Task | None = None) -> Settings:
    """The settings a run of `job` gets: the config file and environment, then its task
    file's, then the job's own options; approvals only where the task file asks them (and a
    job refuses those calls), else none."""
    options = job.options
    given = {
        "model": options.model,
        "model_server": options.model_server,
        "thinking": options.thinking,
        "seed": options.seed,
        "max_steps": options.max_steps,
    }
    base = task_settings(task) if task is not None else {}
    settings = load_settings({**base, **{k: v for k, v in given.items() if v is not None}})
    return replace(
        settings,
        tools=_first(options.tools, base.get("tools"), DEFAULT_TOOLS),
        code_network=_first(options.code_network, base.get("code_network"), False),
        approve=base.get("approve", "none"),
        log=True,
    )


def job_time_limit(job: Job, task: Task | None = None) -> float:
    """How long a run of `job` may take: the job's limit, else its task file's, else 10 min."""
    return _first(job.options.time_limit_s, task and task.time_limit_s, DEFAULT_TIME_LIMIT_S)


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None)
