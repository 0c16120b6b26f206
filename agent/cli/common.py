"""What the commands share: exit codes, logging, run directories, opening the tools."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agent import qwen_agent_compat
from agent.config import Settings
from agent.paths import runs_dir
from agent.render import visible

log = logging.getLogger("agent")

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130


class _VisibleFormatter(logging.Formatter):
    """Log lines quote tools and servers (their errors, their stderr): shown, not executed."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record))


def setup_logging(debug: bool) -> None:
    """Our logs on stderr, plain lines; Qwen-Agent's only with --debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_VisibleFormatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    qwen_agent_compat.set_debug(debug)


def new_run_dir() -> Path:
    """A fresh `runs/<id>/` with its `work/` and `logs/` directories."""
    path = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (path / "work").mkdir(parents=True, exist_ok=True)
    (path / "logs").mkdir(exist_ok=True)
    return path


def open_tools(settings: Settings, run_dir: Path) -> Any:
    """The run's toolset; each tool that did not load is one warning line."""
    from agent.tools.toolset import open_toolset

    toolset = open_toolset(settings, work_dir=run_dir / "work", log_dir=run_dir / "logs")
    for problem in toolset.problems:
        log.warning("warning: %s", problem)
    return toolset


@contextlib.contextmanager
def open_tools_while(load: Callable[[], Any], settings: Settings) -> Iterator[tuple[Any, Any]]:
    """Start the tools in the background while `load` runs (the model load); close them after."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(open_tools, settings, new_run_dir())
        try:
            loaded = load()
        except BaseException:
            if opening.exception() is None:
                opening.result().close()
            raise
        toolset = opening.result()  # raises what went wrong starting the tools
    with toolset:
        yield loaded, toolset


def write_atomically(path: Path, text: str) -> None:
    """Write to a scratch file beside `path`, then rename: never a half-written file."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        scratch.write_text(text, encoding="utf-8")
        scratch.replace(path)
    finally:
        scratch.unlink(missing_ok=True)
