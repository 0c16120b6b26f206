"""A scheduled job: its name, task, trigger and options, and the settings its runs get.

Defaults, for a job nobody watches: the read-only tools only, the code interpreter's network
off, ten minutes per run, no approval prompt ever (a job cannot ask anyone). A run that would
overlap the job's previous one is skipped (as Kubernetes' `Forbid` and systemd do), and runs
missed while the scheduler was down run once when it is back within a day (systemd's
`Persistent=true`, APScheduler's coalescing with a grace time).
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

DEFAULT_TOOLS = (*READ_ONLY_SERVERS, *READ_ONLY_TOOLS)
DEFAULT_TIME_LIMIT_S = 600.0
DEFAULT_GRACE_S = 86400.0
OVERLAP_POLICIES = ("skip", "queue")
MISSED_POLICIES = ("run-once", "skip")


@dataclass(frozen=True)
class JobOptions:
    """How a job runs. `None` model settings leave the config file and environment in force."""

    model: str | None = None
    model_server: str | None = None
    thinking: bool | None = None
    seed: int | None = None
    tools: tuple[str, ...] = DEFAULT_TOOLS
    max_steps: int | None = None
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    code_network: bool = False
    output: str | None = None  # one file, replaced by each successful run's answer
    output_dir: str | None = None  # one file per run
    overlap: str = "skip"
    missed: str = "run-once"
    grace_s: float = DEFAULT_GRACE_S
    on_success: str | None = None
    on_failure: str | None = None


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
    options["tools"] = tuple(options["tools"])
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
    if not task.strip():
        raise ConfigError("the job has no task: give the task text after the name")
    if options.overlap not in OVERLAP_POLICIES:
        raise ConfigError(f"--overlap must be one of {', '.join(OVERLAP_POLICIES)}")
    if options.missed not in MISSED_POLICIES:
        raise ConfigError(f"--missed must be one of {', '.join(MISSED_POLICIES)}")
    if options.output and options.output_dir:
        raise ConfigError("give --output (one file) or --output-dir (a file per run), not both")
    if options.time_limit_s <= 0:
        raise ConfigError("--time-limit must be above zero")


def absolute(path: str | None) -> str | None:
    """A user's path as an absolute one (the scheduler runs from another directory)."""
    return None if path is None else str(Path(path).expanduser().resolve())


def job_settings(job: Job) -> Settings:
    """The settings a run of `job` gets: the config file and environment, then the job's own
    options, and never an approval prompt."""
    options = job.options
    given = {
        "model": options.model,
        "model_server": options.model_server,
        "thinking": options.thinking,
        "seed": options.seed,
        "max_steps": options.max_steps,
    }
    settings = load_settings({key: value for key, value in given.items() if value is not None})
    return replace(
        settings,
        tools=options.tools,
        code_network=options.code_network,
        approve="none",
        log=True,
    )
