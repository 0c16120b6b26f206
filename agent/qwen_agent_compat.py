"""Every workaround for Qwen-Agent 0.0.34's side effects, in one place.

Imported by `agent/__init__.py`, so it runs before anything imports `qwen_agent`:
- Qwen-Agent creates `./workspace/` in the current directory: we point its workspace under
  `AGENT_HOME` (its settings read `QWEN_AGENT_DEFAULT_WORKSPACE` at import time).
- Its tool loop ends silently after 20 LLM calls; ours replaces it (AgentAssistant._run in
  agent/loop/assistant.py, with a step limit that ends in a final answer).
- Its tool-call parser drops calls a small model makes; ours replaces it
  (agent/loop/call_parser.py).
- Importing its tools installs SIGINT/SIGTERM handlers (to kill its Docker kernels); we restore
  the handlers that were there, so Ctrl-C stays ours.
- It logs INFO and WARNING lines to stderr (one per tool we register under its own names); we
  keep only errors unless `--debug`.
"""

from __future__ import annotations

import logging
import os
import signal

from agent.paths import cache_dir

QWEN_AGENT_LOGGER = "qwen_agent_logger"


def _import_qwen_agent_keeping_signal_handlers() -> None:
    handled = (signal.SIGINT, signal.SIGTERM)
    saved = {sig: signal.getsignal(sig) for sig in handled}
    import qwen_agent.agents  # noqa: F401  (installs handlers as a side effect)
    import qwen_agent.tools  # noqa: F401

    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


def apply() -> None:
    """Contain Qwen-Agent's side effects. Safe to call more than once."""
    os.environ["QWEN_AGENT_DEFAULT_WORKSPACE"] = str(cache_dir() / "qwen-agent-workspace")
    _import_qwen_agent_keeping_signal_handlers()
    set_debug(False)


def set_debug(debug: bool) -> None:
    """Show Qwen-Agent's INFO/DEBUG logs only when debugging."""
    logging.getLogger(QWEN_AGENT_LOGGER).setLevel(logging.DEBUG if debug else logging.ERROR)


apply()
