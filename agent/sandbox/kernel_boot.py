"""The kernel's start inside the sandbox: ipykernel, hardened once its own sockets are bound.

    python kernel_boot.py [--address-space-mb N] -f CONNECTION_FILE [ipykernel options]

Run by path in place of `-m ipykernel_launcher` (standard library and ipykernel only; the agent
package is not visible in the sandbox). After ipykernel has bound its sockets, and before any
code of the user's runs, it:
- refuses new Unix sockets and io_uring (`seccomp_filters.unix_socket_filter`): the code can
  connect to no Unix socket outside, pathname or abstract, whatever its mode or owner;
- becomes a child subreaper: processes the code leaves behind stay its descendants, so the
  agent can kill them after each call, and reaps them before the next call runs (a zombie
  still counts against the process limit);
- ends every forked copy of itself when the code that forked it is done (`end_forked_copies`):
  a child of `os.fork()` that returned to ipykernel's event loop would share the kernel's
  inherited sockets and epoll set, steal its wake-ups and leave it deaf to the next request;
- with `--address-space-mb N`, limits its address space to what it already uses plus N MB (the
  memory limit where no cgroup bounds the whole sandbox): the kernel always starts, and code
  that allocates past the limit gets a MemoryError.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import sys
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36


def _address_space_in_use() -> int:
    """This process's virtual size in bytes (VmSize)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def harden(address_space_mb: int) -> None:
    """Everything above, applied to this process (the kernel, sockets bound)."""
    import seccomp_filters

    program = seccomp_filters.unix_socket_filter()
    if program is not None:
        seccomp_filters.apply(program)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if address_space_mb > 0:
        limit = _address_space_in_use() + address_space_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def reap_children() -> None:
    """Collect every child that has exited (the ones the agent killed after the last call)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _exit_status(result: Any) -> int:
    """The status a process exits with after running a cell with this `ExecutionResult`."""
    error = None if result is None else result.error_before_exec or result.error_in_exec
    if error is None:
        return 0
    if isinstance(error, SystemExit):  # IPython catches sys.exit(n); a process honours it
        return error.code if isinstance(error.code, int) else int(error.code is not None)
    return 1


def end_forked_copies(shell: Any) -> None:
    """Make a process forked by the code exit where the code ends, not go on as a kernel.

    Every cell runs inside `run_cell_async` (IPython's synchronous `run_cell` calls it too),
    so the check right after it comes before ipykernel's event loop can run again in the copy
    (the post_execute event would come after)."""
    kernel_pid = os.getpid()
    run = shell.run_cell_async

    @functools.wraps(run)
    async def run_cell_async(*args: Any, **kwargs: Any) -> Any:
        result = None
        try:
            result = await run(*args, **kwargs)
            return result
        finally:
            if os.getpid() != kernel_pid:
                os._exit(_exit_status(result))

    shell.run_cell_async = run_cell_async


def main(argv: list[str]) -> None:
    """Start ipykernel with `argv` (less our own option), harden it, then serve."""
    here = os.path.dirname(os.path.abspath(__file__))
    address_space_mb = 0
    if argv[:1] == ["--address-space-mb"]:
        address_space_mb, argv = int(argv[1]), argv[2:]
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(argv)
    harden(address_space_mb)
    app.shell.events.register("pre_execute", reap_children)  # type: ignore[union-attr]
    end_forked_copies(app.shell)
    sys.path[:] = [path for path in sys.path if path != here]  # the user's imports: not ours
    app.start()


if __name__ == "__main__":
    main(sys.argv[1:])
