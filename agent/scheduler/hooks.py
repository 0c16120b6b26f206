"""`--on-success` / `--on-failure`: the user's command, after a run, told what happened.

The command is the user's own (given at `add`), run by `/bin/sh -c`; what the run produced
reaches it only as environment variables (never as command text), with control characters
removed. It gets its own process group, killed whole after `HOOK_TIMEOUT_S`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess

from agent.render import visible

HOOK_TIMEOUT_S = 60.0
log = logging.getLogger("agent")


def run_hook(command: str, values: dict[str, str]) -> int | None:
    """Run `command` with `AGENT_<KEY>` variables; its exit code (None when it timed out)."""
    env = {
        **os.environ,
        **{f"AGENT_{key.upper()}": visible(value) for key, value in values.items()},
    }
    process = subprocess.Popen(
        ["/bin/sh", "-c", command], env=env, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        code = process.wait(timeout=HOOK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.warning("hook %r killed after %g s", command, HOOK_TIMEOUT_S)
        return None
    if code != 0:
        log.warning("hook %r exited with %d", command, code)
    return code
