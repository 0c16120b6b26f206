"""Test bodies run in a child process, so that one which kills its process (a kernel's
segmentation fault) fails that case alone instead of ending the whole test run.

One child is started (spawned: no forked OpenMP state) and reused case after case; after a
crash the next case gets a new one.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

CASE_TIMEOUT_S = 600


class ChildCrashed(AssertionError):
    """The child process died while running a case."""


def _serve(connection: Connection) -> None:
    while True:
        function, args = connection.recv()
        try:
            connection.send((True, function(*args)))
        except Exception as exc:  # noqa: BLE001 - the parent re-raises it as the case's failure
            connection.send((False, f"{type(exc).__name__}: {exc}"))


class ChildRunner:
    """Runs module-level functions in a long-lived spawned child and returns their results."""

    def __init__(self) -> None:
        self._child: tuple[BaseProcess, Connection] | None = None

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in the child: its result; a crash or an exception fails the case."""
        if self._child is None:
            ours, theirs = multiprocessing.get_context("spawn").Pipe()
            process = multiprocessing.get_context("spawn").Process(
                target=_serve, args=(theirs,), daemon=True
            )
            process.start()
            theirs.close()  # the child's end: the parent must see EOF when the child dies
            self._child = process, ours
        process, connection = self._child
        connection.send((function, args))
        if not connection.poll(CASE_TIMEOUT_S):  # also true when the child died: EOF is readable
            self.close()
            raise ChildCrashed(f"{function.__name__}{args} did not finish in {CASE_TIMEOUT_S} s")
        try:
            ok, result = connection.recv()
        except (EOFError, ConnectionError):
            process.join(5)
            how = _how(process)
            self.close()
            raise ChildCrashed(f"{function.__name__}{args} killed its process ({how})") from None
        if not ok:
            raise AssertionError(f"{function.__name__}{args} raised {result}")
        return result

    def close(self) -> None:
        """End the child (a new one starts at the next case)."""
        if self._child is not None:
            process, connection = self._child
            connection.close()
            process.kill()
            process.join(5)
            self._child = None


def _how(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
