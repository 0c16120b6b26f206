"""Seccomp filters for the code interpreter's kernel (standard library only).

It is imported by `confine.py` and `kernel_boot.py`, which run as scripts inside the sandbox,
so it imports nothing of the agent package.

- `network_filter()`: without network, every socket but Unix and netlink ones is refused, and
  io_uring (which could open sockets past the filter). Applied before the kernel starts.
- `unix_socket_filter()`: no new Unix socket at all, and no io_uring. Applied by the kernel
  itself once it has bound its own sockets, so the code it runs can connect to no Unix socket
  (pathname or abstract), whatever the socket's mode and whoever we run as. socketpair() still
  works (asyncio, multiprocessing pipes): a pair reaches nothing outside.

Both refuse calls of another ABI (i386 or x32 on x86-64) outright, since those have other
syscall numbers. A call refused gets EACCES.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

_PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 22, 38
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_DENY = _RET_ERRNO | 13  # EACCES
# (audit arch, socket, io_uring_setup, whether numbers >= 0x40000000 are another ABI: x32)
_ARCHES = {
    "x86_64": (0xC000003E, 41, 425, True),
    "aarch64": (0xC00000B7, 198, 425, False),
}
AF_UNIX, AF_NETLINK = 1, 16  # netlink: zeromq reads the interface list with it

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]


class SeccompError(Exception):
    """A filter could not be applied."""


def _program(socket_families_allowed: bool, families: tuple[int, ...]) -> bytes | None:
    """A filter on socket(): `families` are the allowed ones (`socket_families_allowed`) or the
    refused ones; io_uring_setup and foreign ABIs refused. None for an unknown architecture."""
    arch = _ARCHES.get(platform.machine())
    if arch is None:
        return None
    audit_arch, nr_socket, nr_io_uring_setup, has_x32 = arch
    ld_arch, ld_nr, ld_arg0 = (0x20, 0, 0, 4), (0x20, 0, 0, 0), (0x20, 0, 0, 16)
    # Family tests: jump to `matched` (n instructions on) when equal; fall through otherwise.
    n = len(families)
    tests = [(0x15, n - i, 0, family) for i, family in enumerate(families)]
    unmatched, matched = (_DENY, _RET_ALLOW) if socket_families_allowed else (_RET_ALLOW, _DENY)
    program = [
        ld_arch,
        (0x15, 1, 0, audit_arch),  # native calls go on; others (e.g. i386 on x86_64) refused
        (0x06, 0, 0, _DENY),
        ld_nr,
        (0x35, 6 + n, 0, 0x40000000) if has_x32 else (0x05, 0, 0, 0),  # x32 calls refused
        (0x15, 2, 0, nr_socket),
        (0x15, 4 + n, 0, nr_io_uring_setup),
        (0x06, 0, 0, _RET_ALLOW),
        ld_arg0,
        *tests,
        (0x06, 0, 0, unmatched),
        (0x06, 0, 0, matched),
        (0x06, 0, 0, _DENY),
    ]
    # Jumps are relative to the next instruction: x32 and io_uring land on the final deny.
    return b"".join(struct.pack("<HBBI", *op) for op in program)


def network_filter() -> bytes | None:
    """Only Unix and netlink sockets (no network); None where the architecture is unknown."""
    return _program(True, (AF_UNIX, AF_NETLINK))


def unix_socket_filter() -> bytes | None:
    """No new Unix sockets; None where the architecture is unknown."""
    return _program(False, (AF_UNIX,))


def apply(program: bytes) -> None:
    """Install `program` on the calling thread's process (and its future children)."""
    filters = ctypes.create_string_buffer(program)
    fprog = struct.pack("<HxxxxxxQ", len(program) // 8, ctypes.addressof(filters))
    fprog_buffer = ctypes.create_string_buffer(fprog)
    for option, args, what in (
        (_PR_SET_NO_NEW_PRIVS, (1, 0, 0, 0), "no_new_privs"),
        (_PR_SET_SECCOMP, (_SECCOMP_MODE_FILTER, ctypes.addressof(fprog_buffer), 0, 0), "seccomp"),
    ):
        if _libc.prctl(option, *args) < 0:
            raise SeccompError(f"{what}: {os.strerror(ctypes.get_errno())}")
