"""Confine a command with Landlock and seccomp, then run it: the sandbox where bubblewrap fails.

    python -I -S confine.py [--read PATH]... [--write PATH]... [--no-network] -- COMMAND...
    python -I -S confine.py --probe [--no-network]

Landlock (Linux 5.13+) limits the filesystem to the `--read` paths (read and execute) and the
`--write` paths (everything); other files cannot be opened or listed. From Landlock ABI 4 it
also refuses TCP bind/connect without `--no-network` lifted, and from ABI 6 it keeps signals and
abstract Unix sockets inside the sandbox. A seccomp filter refuses every socket but Unix ones
(and io_uring) without network (`seccomp_filters.py`). `no_new_privs` is set and the command
dies with its parent.
`--probe` applies everything to itself and prints what is in force as JSON.

It runs as a script with only the standard library (`-I -S`), before the kernel starts, so it
never imports the agent package.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import sys

if __package__:
    from agent.sandbox import seccomp_filters
else:  # run as a script (`python -I -S confine.py`): the module lies beside it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import seccomp_filters  # type: ignore[no-redef]

# Syscall numbers shared by every architecture (they came after the tables were unified).
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2

_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]


class ConfineError(Exception):
    """A protection could not be applied."""


def _check(result: int, what: str) -> int:
    if result < 0:
        raise ConfineError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def landlock_abi() -> int:
    """The Landlock ABI version this kernel offers (0: none)."""
    version = _libc.syscall(
        ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(int(version), 0)


def _fs_rights(abi: int) -> int:
    """Every filesystem right `abi` knows (13 at ABI 1, then REFER, TRUNCATE, IOCTL_DEV)."""
    return (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(abi, 16)) - 1


def _file_rights(abi: int) -> int:
    """The rights that apply to a file (not a directory)."""
    rights = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE
    return rights | (_FS_TRUNCATE if abi >= 3 else 0) | (_FS_IOCTL_DEV if abi >= 5 else 0)


def _apply_landlock(abi: int, read: list[str], write: list[str], network: bool) -> None:
    handled_fs = _fs_rights(abi)
    handled_net = 0 if network or abi < 4 else _NET_BIND_TCP | _NET_CONNECT_TCP
    scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL if abi >= 6 else 0
    fields = [handled_fs] + ([handled_net] if abi >= 4 else []) + ([scoped] if abi >= 6 else [])
    attr = ctypes.create_string_buffer(struct.pack(f"<{len(fields)}Q", *fields))
    ruleset = _check(
        _libc.syscall(
            ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET),
            attr,
            ctypes.c_size_t(len(attr.raw)),
            ctypes.c_uint32(0),
        ),
        "landlock_create_ruleset",
    )
    read_only = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
    rules = [(path, read_only) for path in read] + [(path, handled_fs) for path in write]
    rules += [(path, _file_rights(abi) & ~_FS_EXECUTE) for path in _DEVICES]
    # Its own /proc entry (the command is this process after exec): kernel_boot.py reads VmSize.
    rules.append((f"/proc/{os.getpid()}", read_only & ~_FS_EXECUTE))
    try:
        for path, rights in rules:
            _add_path_rule(ruleset, path, rights, abi)
        _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        restrict = ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF)
        _check(
            _libc.syscall(restrict, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
            "landlock_restrict_self",
        )
    finally:
        os.close(ruleset)


def _add_path_rule(ruleset: int, path: str, rights: int, abi: int) -> None:
    """Allow `rights` beneath `path` (only a file's own rights when it is a file); skip absent."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _file_rights(abi)
        rule = ctypes.create_string_buffer(struct.pack("<Qi", rights, fd))  # packed struct
        _check(
            _libc.syscall(
                ctypes.c_long(_SYS_LANDLOCK_ADD_RULE),
                ctypes.c_int(ruleset),
                ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH),
                rule,
                ctypes.c_uint32(0),
            ),
            f"landlock_add_rule {path}",
        )
    finally:
        os.close(fd)


def confine(read: list[str], write: list[str], network: bool) -> dict[str, object]:
    """Apply every protection this kernel offers to the calling process; what is in force."""
    abi = landlock_abi()
    if abi < 1:
        raise ConfineError("Landlock is not available (Linux 5.13+ with Landlock enabled)")
    _check(_libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "parent death signal")
    _apply_landlock(abi, read, write, network)
    program = None if network else seccomp_filters.network_filter()
    if program is not None:
        try:
            seccomp_filters.apply(program)
        except seccomp_filters.SeccompError as exc:
            raise ConfineError(str(exc)) from None
    return {"landlock_abi": abi, "seccomp": program is not None, "network": network}


def main(argv: list[str]) -> int:
    """Parse the options, confine this process, then exec the command (or report, `--probe`)."""
    read: list[str] = []
    write: list[str] = []
    network, probe = True, False
    while argv and argv[0] != "--":
        option = argv.pop(0)
        if option in ("--read", "--write"):
            (read if option == "--read" else write).append(argv.pop(0))
        elif option == "--no-network":
            network = False
        elif option == "--probe":
            probe = True
        else:
            print(f"confine: unknown option {option}", file=sys.stderr)
            return 2
    command = argv[1:]
    if not probe and not command:
        print("confine: no command after --", file=sys.stderr)
        return 2
    try:
        in_force = confine(read, write, network)
    except ConfineError as exc:
        print(f"confine: {exc}", file=sys.stderr)
        return 1
    if probe:
        print(json.dumps(in_force))
        return 0
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"confine: cannot run {command[0]}: {exc}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
