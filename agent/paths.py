"""Where the app keeps its files: one per-user directory, `AGENT_HOME` overrides it."""

import os
import secrets
import time
from pathlib import Path

import platformdirs


def agent_home() -> Path:
    """The directory that holds everything the app writes (config, runs, caches)."""
    override = os.environ.get("AGENT_HOME")
    if override:
        return Path(override).expanduser().resolve()
    return Path(platformdirs.user_data_dir("agent", appauthor=False))


def config_file() -> Path:
    """The user's config file (TOML)."""
    return agent_home() / "config.toml"


def runs_dir() -> Path:
    """Per-run data: code interpreter work directories and the like."""
    return agent_home() / "runs"


def history_file() -> Path:
    """The run history database (SQLite), unless `history` in the settings moves it."""
    return agent_home() / "history.sqlite3"


def chat_input_history() -> Path:
    """What the user typed in `agent chat`, for the up arrow and Ctrl-R across sessions."""
    return agent_home() / "chat_input_history"


def cache_dir() -> Path:
    """Caches of the app's own (built test models, Qwen-Agent's workspace)."""
    return agent_home() / "cache"


DEFAULTS = Path(__file__).resolve().parent / "defaults"  # package data: travels with the app


def packaged_mcp_config() -> Path:
    """The default MCP servers (`time`, `fetch`), inside the installed package."""
    return DEFAULTS / "mcp_config.json"


def shipped_tools_dir() -> Path:
    """The plugin tools that ship with the app (calculator, files, sqlite_query)."""
    return DEFAULTS / "tools"


def user_mcp_config() -> Path:
    """The user's own MCP servers file, beside `config.toml`: it replaces the defaults."""
    return agent_home() / "mcp_config.json"


def mcp_config_in_force() -> Path:
    """The user's `mcp_config.json` where there is one, else the packaged defaults."""
    user = user_mcp_config()
    return user if user.is_file() else packaged_mcp_config()


def user_tools_dirs() -> list[Path]:
    """The user's tool directories, first one first (`agent tools new` writes there).

    `AGENT_TOOLS_PATH` (several paths joined by the platform's path separator) if set; else
    `$AGENT_HOME/tools` if `AGENT_HOME` is set; else `tools/` in the user's config directory.
    """
    override = os.environ.get("AGENT_TOOLS_PATH")
    if override:
        return [Path(part).expanduser() for part in override.split(os.pathsep) if part]
    if os.environ.get("AGENT_HOME"):
        return [agent_home() / "tools"]
    return [Path(platformdirs.user_config_dir("agent", appauthor=False)) / "tools"]


def jobs_dir() -> Path:
    """Scheduled jobs' answer files, one directory per job, unless a job names its own."""
    return agent_home() / "jobs"


def new_run_dir() -> Path:
    """A fresh `runs/<id>/` with its `work/` and `logs/` directories."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(2)}"
    path = runs_dir() / stamp
    (path / "work").mkdir(parents=True, exist_ok=True)
    (path / "logs").mkdir(exist_ok=True)
    return path


def write_atomically(path: Path, text: str) -> None:
    """Write to a scratch file beside `path`, then rename: never a half-written file."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        scratch.write_text(text, encoding="utf-8")
        scratch.replace(path)
    finally:
        scratch.unlink(missing_ok=True)
