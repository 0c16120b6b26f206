"""Isolation for the code interpreter's kernel: which mechanism works here, and its command line.

`detect()` tries bubblewrap once (`bwrap ... true`); where it runs, the kernel gets a read-only
view of the system and the Python install, its work directory as the only writable place, no
network (unless asked), its own PID namespace and rlimits. Where it does not run, there is no
isolation and the code interpreter refuses to start unless the user allows unsafe code.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534  # the uid and gid the kernel runs as when we are root
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/fonts",
    "/etc/mime.types",
)
BWRAP_PROTECTIONS = (
    "filesystem: system and Python read-only, work directory the only writable place, "
    "home and other private places not visible",
    "processes: own PID namespace, killed with the run",
    "environment: minimal variables, no secrets",
)
_MISSING_ALL = (
    "filesystem: the code can read and write everything the user can",
    "network: not isolated",
    "processes: not isolated",
)


@dataclass(frozen=True)
class Limits:
    """Resource limits of the kernel process (rlimits), 0 meaning none."""

    memory_mb: int = 2048
    cpu_s: int = 600
    processes: int = 128
    file_size_mb: int = 1024


@dataclass(frozen=True)
class Sandbox:
    """The isolation in force: its mechanism, what it protects, and what it does not."""

    mechanism: str  # "bubblewrap" or "none"
    protections: tuple[str, ...]
    missing: tuple[str, ...]
    note: str = ""  # why this mechanism (e.g. why bubblewrap does not work here)

    @property
    def isolated(self) -> bool:
        return self.mechanism != "none"

    def summary(self, network: bool) -> str:
        """One line for the run header: `bubblewrap, network off`."""
        net = "on" if network or not self.isolated else "off"
        name = self.mechanism if self.isolated else "NONE (unsafe code allowed)"
        return f"{name}, network {net}"


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _bwrap_base(bwrap: str, network: bool) -> list[str]:
    cmd = [bwrap, "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    if not _running_as_root():  # as root we drop to `nobody` inside instead (see kernel_command)
        cmd.append("--unshare-user")
    if not network:
        cmd.append("--unshare-net")
    cmd += ["--die-with-parent", "--new-session", "--proc", "/proc", "--dev", "/dev"]
    cmd += ["--tmpfs", "/tmp"]
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    for path in _ETC_FILES:
        cmd += ["--ro-bind-try", path, path]
    return cmd


def python_dirs() -> list[str]:
    """The directories the kernel's Python needs: prefixes and site-packages, read-only."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()]
    candidates.append(str(Path(sys.executable).resolve().parent.parent))
    user_site = site.getusersitepackages()
    if os.path.isdir(user_site):
        candidates.append(user_site)
    dirs: list[str] = []
    for path in sorted({os.path.realpath(p) for p in candidates} | set(candidates), key=len):
        if path != "/" and os.path.isdir(path) and not any(_inside(path, d) for d in dirs):
            dirs.append(path)
    return dirs


def _parents(path: str) -> list[str]:
    """Options creating the parents of `path` traversable (bwrap copies modes such as /root's
    0700, which `nobody` could not pass)."""
    options: list[str] = []
    for parent in reversed(Path(path).parents):
        if str(parent) not in ("/", "/tmp") and not any(
            _inside(str(parent), d) for d in _SYSTEM_DIRS
        ):
            options += ["--perms", "0755", "--dir", str(parent)]
    return options


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def rlimit_prefix(limits: Limits) -> list[str]:
    """`prlimit` options setting `limits` on the command that follows (empty without prlimit)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    options = {
        "--as": limits.memory_mb * 2**20,
        "--cpu": limits.cpu_s,
        "--nproc": limits.processes,
        "--fsize": limits.file_size_mb * 2**20,
    }
    return [prlimit, *(f"{flag}={value}" for flag, value in options.items() if value), "--"]


def _drop_root() -> list[str]:
    setpriv = shutil.which("setpriv") or "setpriv"
    ids = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return [setpriv, *ids, "--inh-caps=-all", "--bounding-set=-all", "--"]


def kernel_command(
    argv: list[str],
    sandbox: Sandbox,
    writable: list[Path],
    limits: Limits,
    network: bool,
) -> list[str]:
    """`argv` wrapped in the sandbox (if any) and rlimits; `writable` are bound read-write."""
    inner = rlimit_prefix(limits) + argv
    if not sandbox.isolated:
        return inner
    cmd = _bwrap_base(shutil.which("bwrap") or "bwrap", network)
    for path in python_dirs():
        cmd += [*_parents(path), "--ro-bind", path, path]
    for place in writable:
        cmd += [*_parents(str(place)), "--bind", str(place), str(place)]
    # / and /tmp read-only once their mount points exist: only `writable` can be written
    cmd += ["--remount-ro", "/tmp", "--remount-ro", "/", "--chdir", str(writable[0]), "--"]
    return cmd + (_drop_root() if _running_as_root() else []) + inner


def prepare_writable(path: Path) -> None:
    """Make `path` writable by the sandboxed kernel (owned by `nobody` when we are root)."""
    if _running_as_root() and detect().isolated:
        os.chown(path, NOBODY, NOBODY)


def _limit_notes(isolated: bool) -> tuple[str, ...]:
    nproc = "process count" if isolated or not _running_as_root() else "(not process count)"
    return (f"resources: rlimits on memory, CPU time, file size, {nproc}",)


@functools.cache
def detect() -> Sandbox:
    """The best isolation that works on this machine, found by trying it once."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        note = "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
        return _none(note)
    cmd = _bwrap_base(bwrap, network=False) + ["--", *(_drop_root() if _running_as_root() else [])]
    try:
        done = subprocess.run(
            [*cmd, "true"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return _none(f"bubblewrap does not run here: {exc}")
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return _none(f"bubblewrap does not work here (no user namespaces?): {reason}")
    protections = (*BWRAP_PROTECTIONS, "network: none unless --code-network", *_limit_notes(True))
    return Sandbox("bubblewrap", protections, missing=())


def _none(note: str) -> Sandbox:
    return Sandbox("none", _limit_notes(False), missing=_MISSING_ALL, note=note)
