"""Join cgroups, then run a command: the first step of a sandboxed kernel's command line.

    python -I -S enter_cgroup.py PROCS_FILE [PROCS_FILE...] -- COMMAND...

Each PROCS_FILE is a cgroup's `cgroup.procs`; this process writes its pid there before it
executes COMMAND, so the command and everything it starts are counted by those cgroups from
their first instruction. Standard library only (`-I -S`): it never imports the agent package.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    """Join the cgroups named before `--`, then exec the command after it."""
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("enter_cgroup: usage: PROCS_FILE... -- COMMAND...", file=sys.stderr)
        return 2
    split = argv.index("--")
    try:
        for procs in argv[:split]:
            with open(procs, "w", encoding="ascii") as handle:
                handle.write(str(os.getpid()))
    except OSError as exc:
        print(f"enter_cgroup: cannot join {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    command = argv[split + 1 :]
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"enter_cgroup: cannot run {command[0]}: {exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
