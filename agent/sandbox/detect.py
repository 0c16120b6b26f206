"""Isolation for the code interpreter's kernel: which mechanism works here, and its command line.

`detect()` tries bubblewrap once (`bwrap ... true`); where it runs, the kernel gets a read-only
view of the system and the Python install, its work directory as the only writable place, no
network (unless asked), its own PID namespace and rlimits. Where it does not (no user
namespaces, inside some containers), Landlock and seccomp (`confine.py`) give the filesystem
and network part without namespaces. With neither there is no isolation and the code
interpreter refuses to start unless the user allows unsafe code.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from agent.config import SANDBOXES

NOBODY = 65534  # the uid and gid the kernel runs as when we are root
CONFINE_SCRIPT = Path(__file__).with_name("confine.py")
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
LANDLOCK_MISSING = (
    "processes: no PID namespace: the code can list the machine's processes, and children "
    "that leave its process group can outlive the run",
    "filesystem: names outside the allowed places can still be probed (stat), not read",
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

    mechanism: str  # "bubblewrap", "landlock" or "none"
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
    cmd += ["--tmpfs", "/tmp", "--perms", "1777", "--tmpfs", "/dev/shm"]  # multiprocessing
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


def _drop_capabilities() -> list[str]:
    """As root without namespaces: no capabilities, and the real uid `nobody` so that the
    process-count limit holds (Linux does not apply it to a real uid 0). The effective uid
    stays root so the kernel can still read a Python installed under /root; Landlock, not file
    modes, keeps it in its places."""
    setpriv = shutil.which("setpriv") or "setpriv"
    return [setpriv, f"--ruid={NOBODY}", "--inh-caps=-all", "--bounding-set=-all", "--"]


def kernel_command(
    argv: list[str],
    sandbox: Sandbox,
    writable: list[Path],
    limits: Limits,
    network: bool,
) -> list[str]:
    """`argv` wrapped in the sandbox (if any) and rlimits; `writable` are bound read-write."""
    inner = rlimit_prefix(limits) + argv
    if sandbox.mechanism == "landlock":
        root = _drop_capabilities() if _running_as_root() else []
        return root + _confine_command([str(p) for p in writable], network) + ["--", *inner]
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


def _confine_command(writable: list[str], network: bool) -> list[str]:
    """`confine.py` with the read-only system and Python places and the `writable` ones."""
    cmd = [sys.executable, "-I", "-S", str(CONFINE_SCRIPT)]
    for path in (*_SYSTEM_DIRS, *_ETC_FILES, *python_dirs()):
        cmd += ["--read", path]
    for path in writable:
        cmd += ["--write", path]
    return cmd + ([] if network else ["--no-network"])


def prepare_writable(path: Path, sandbox: Sandbox) -> None:
    """Make `path` writable by the sandboxed kernel (owned by `nobody` in bubblewrap as root)."""
    if _running_as_root() and sandbox.mechanism == "bubblewrap":
        os.chown(path, NOBODY, NOBODY)


def _limit_notes(mechanism: str) -> tuple[str, ...]:
    counted = mechanism != "none" or not _running_as_root()
    nproc = "process count" if counted else "(not process count)"
    return (f"resources: rlimits on memory, CPU time, file size, {nproc}",)


@functools.cache
def detect(choice: str = "auto") -> Sandbox:
    """The best isolation of `choice` (auto: bubblewrap, else Landlock) that works on this
    machine, found by trying it once."""
    if choice not in SANDBOXES:
        raise ValueError(f"sandbox must be one of {', '.join(SANDBOXES)}, not {choice!r}")
    reasons = []
    if choice in ("auto", "bubblewrap"):
        found = _try_bubblewrap()
        if isinstance(found, Sandbox):
            return found
        reasons.append(found)
    if choice in ("auto", "landlock"):
        landlock = _try_landlock()
        if isinstance(landlock, Sandbox):
            return replace(landlock, note="; ".join(reasons))
        reasons.append(landlock)
    return _none("; ".join(reasons))


def _try_bubblewrap() -> Sandbox | str:
    """The bubblewrap sandbox, or why it does not work here."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    cmd = _bwrap_base(bwrap, network=False) + ["--", *(_drop_root() if _running_as_root() else [])]
    try:
        done = subprocess.run(
            [*cmd, "true"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap does not run here: {exc}"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"bubblewrap does not work here (no user namespaces?): {reason}"
    protections = (*BWRAP_PROTECTIONS, "network: none unless --code-network")
    return Sandbox("bubblewrap", (*protections, *_limit_notes("bubblewrap")), missing=())


def _try_landlock() -> Sandbox | str:
    """The Landlock + seccomp sandbox, with what this kernel's ABI gives, or why it fails."""
    root = _drop_capabilities() if _running_as_root() else []
    cmd = root + _confine_command([], network=False) + ["--probe"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"Landlock does not run here: {exc}"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"Landlock does not work here: {reason.removeprefix('confine: ')}"
    in_force = json.loads(done.stdout)
    abi = in_force["landlock_abi"]
    network = "network: none unless --code-network (seccomp: Unix and netlink sockets only"
    network += ", Landlock: no TCP)" if abi >= 4 else ")"
    if not in_force["seccomp"]:
        network = "network: Landlock refuses TCP only" if abi >= 4 else ""
    protections = [
        f"filesystem (Landlock ABI {abi}): system and Python read-only, work directory the "
        "only writable place, home and other files cannot be read or listed",
        *([network] if network else []),
        "processes: no new privileges, killed with the run (process group, parent death)",
        "environment: minimal variables, no secrets",
    ]
    missing = list(LANDLOCK_MISSING)
    if not network:
        missing.append("network: not isolated (no seccomp filter for this CPU, Landlock < 4)")
    if abi >= 6:
        protections.append("signals and abstract Unix sockets: kept inside the sandbox")
    else:
        missing.append("signals: the code can signal the user's other processes (Landlock < 6)")
    if _running_as_root():
        missing.append("identity: runs with the effective uid root, without capabilities")
    return Sandbox("landlock", (*protections, *_limit_notes("landlock")), missing=tuple(missing))


def _none(note: str) -> Sandbox:
    return Sandbox("none", _limit_notes("none"), missing=_MISSING_ALL, note=note)
