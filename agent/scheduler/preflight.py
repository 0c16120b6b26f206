"""The checks `schedule add` and `edit` make, so a job that cannot run is refused while its
author is watching rather than failing at 8:00 with nobody there."""

from __future__ import annotations

from agent.config import Settings
from agent.errors import ConfigError
from agent.paths import new_run_dir
from agent.scheduler.jobs import Job, job_settings
from agent.tasks import Task

SERVER_TIMEOUT_S = 10.0


def preflight(job: Job, task: Task | None = None) -> None:
    """Raise `ConfigError` when the job's tools do not start or its model does not load
    (with the settings of its task file, `task`, as the file is now)."""
    from agent.tools.toolset import open_tools

    settings = job_settings(job, task)
    with open_tools(settings, new_run_dir()) as toolset:
        servers_down = [p for p in toolset.problems if p.startswith("MCP server")]
        if servers_down:
            raise ConfigError(f"{servers_down[0]} (the job names it; --no-check skips this)")
    if settings.model_server:
        check_server(settings)
    else:
        from agent.loop.assistant import build_llm

        build_llm(settings)


def check_server(settings: Settings) -> None:
    """The model server answers `GET /models` and serves the job's model."""
    import openai

    assert settings.model_server is not None
    client = openai.OpenAI(
        base_url=settings.model_server,
        api_key=settings.api_key or "EMPTY",
        timeout=SERVER_TIMEOUT_S,
        max_retries=0,
    )
    try:
        served = [model.id for model in client.models.list()]
    except openai.OpenAIError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"model server {settings.model_server} does not answer: {reason} "
            "(start it, or --no-check to add the job anyway)"
        ) from None
    if settings.model not in served:
        raise ConfigError(
            f"model server {settings.model_server} serves {', '.join(served) or 'no model'}, "
            f"not {settings.model}: give the job --model with one of those"
        )
