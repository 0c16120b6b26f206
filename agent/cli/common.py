"""What the commands share: exit codes and logging."""

from __future__ import annotations

import logging
import sys

from agent import qwen_agent_compat
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
