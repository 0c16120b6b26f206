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
from agent.sandbox import seccomp_filters
from agent.sandbox.limits import KernelLimits, LimitMechanism, Limits, find_mechanism

__all__ = ["Limits", "Sandbox", "detect", "kernel_command"]

NOBODY = 65534  # the uid and gid the kernel runs as when we are root
CONFINE_SCRIPT = Path(__file__).with_name("confine.py")
KERNEL_BOOT = Path(__file__).with_name("kernel_boot.py")  # runs inside: kept visible, read-only
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
    "processes: own PID namespace; what the code starts is killed after each call",
    "environment: minimal variables, no secrets",
)
UNIX_SOCKETS = (
    "Unix sockets: the code can open none (seccomp, once the kernel has bound its own), so no "
    "socket outside is reachable, pathname or abstract (docker, D-Bus, ssh-agent, X11)"
)
LANDLOCK_MISSING = (
    "processes: no PID namespace: the code can list the machine's processes",
    "filesystem: names outside the allowed places can still be probed (stat), not read",
)
_MISSING_ALL = (
    "filesystem: the code can read and write everything the user can",
    "network: not isolated",
    "processes: not isolated",
)


@dataclass(frozen=True)
class Sandbox:
    """The isolation in force: its mechanism, what it protects, and what it does not."""

    mechanism: str  # "bubblewrap", "landlock" or "none"
    protections: tuple[str, ...]
    missing: tuple[str, ...]
    note: str = ""  # why this mechanism (e.g. why bubblewrap does not work here)
    as_nobody: bool = False  # started as root, the kernel runs as the user `nobody`
    limits: LimitMechanism = LimitMechanism("uid count")  # what enforces processes and memory

    @property
    def isolated(self) -> bool:
        return self.mechanism != "none"

    def summary(self, network: bool, limits: Limits | None = None) -> str:
        """One line for the run header: `bubblewrap, network off, processes 128 (cgroup v1),
        memory 2048 MB (cgroup v1)`; without `limits`, the first two parts."""
        net = "on" if network or not self.isolated else "off"
        name = self.mechanism if self.isolated else "NONE (unsafe code allowed)"
        if limits is None:
            return f"{name}, network {net}"
        return f"{name}, network {net}, " + self.limits.describe(limits.processes, limits.memory_mb)


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


def rlimit_prefix(limits: Limits, nproc: int) -> list[str]:
    """`prlimit` options setting `limits` (and RLIMIT_NPROC `nproc`, 0: none) on the command
    that follows (empty without prlimit)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        return []
    options = {  # memory: kernel_boot.py limits the address space once the kernel has started
        "--cpu": limits.cpu_s,
        "--nproc": nproc,
        "--fsize": limits.file_size_mb * 2**20,
    }
    return [prlimit, *(f"{flag}={value}" for flag, value in options.items() if value), "--"]


def _drop_root() -> list[str]:
    setpriv = shutil.which("setpriv") or "setpriv"
    ids = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return [setpriv, *ids, "--inh-caps=-all", "--bounding-set=-all", "--"]


def _drop_capabilities() -> list[str]:
    """As root without namespaces, where `nobody` cannot reach the Python install (e.g. under
    /root): no capabilities, and the real uid `nobody` so that the process-count limit holds
    (Linux does not apply it to a real uid 0). The effective uid stays root; Landlock, not file
    modes, keeps it in its places, and the kernel's seccomp filter keeps it off Unix sockets."""
    setpriv = shutil.which("setpriv") or "setpriv"
    return [setpriv, f"--ruid={NOBODY}", "--inh-caps=-all", "--bounding-set=-all", "--"]


def kernel_command(
    argv: list[str],
    sandbox: Sandbox,
    writable: list[Path],
    limits: Limits,
    network: bool,
    enforced: KernelLimits,
) -> list[str]:
    """`argv` wrapped in the kernel's limits (`enforced`: its cgroup, its RLIMIT_NPROC), the
    sandbox (if any) and rlimits; `writable` are bound read-write."""
    inner = rlimit_prefix(limits, enforced.nproc) + _booted(argv, limits)
    if sandbox.mechanism == "landlock":
        root = _landlock_identity(sandbox, writable)
        confined = _confine_command([str(p) for p in writable], network)
        return enforced.prefix + root + confined + ["--", *inner]
    if not sandbox.isolated:
        return enforced.prefix + inner
    cmd = _bwrap_base(shutil.which("bwrap") or "bwrap", network)
    for path in [*python_dirs(), str(KERNEL_BOOT.parent)]:
        cmd += [*_parents(path), "--ro-bind", path, path]
    for place in writable:
        cmd += [*_parents(str(place)), "--bind", str(place), str(place)]
    # / and /tmp read-only once their mount points exist: only `writable` can be written
    cmd += ["--remount-ro", "/tmp", "--remount-ro", "/", "--chdir", str(writable[0]), "--"]
    return enforced.prefix + cmd + (_drop_root() if _running_as_root() else []) + inner


def _booted(argv: list[str], limits: Limits) -> list[str]:
    """ipykernel's command with `kernel_boot.py` in place of `-m ipykernel_launcher`."""
    if argv[1:3] != ["-m", "ipykernel_launcher"]:
        return argv
    return [argv[0], str(KERNEL_BOOT), "--address-space-mb", str(limits.memory_mb), *argv[3:]]


def _confine_command(writable: list[str], network: bool) -> list[str]:
    """`confine.py` with the read-only system and Python places and the `writable` ones."""
    cmd = [sys.executable, "-I", "-S", str(CONFINE_SCRIPT)]
    for path in (*_SYSTEM_DIRS, *_ETC_FILES, *python_dirs(), str(KERNEL_BOOT.parent)):
        cmd += ["--read", path]
    for path in writable:
        cmd += ["--write", path]
    return cmd + ([] if network else ["--no-network"])


def _landlock_identity(sandbox: Sandbox, writable: list[Path]) -> list[str]:
    """As root: become `nobody` where it can run the kernel and reach its directories, else
    drop capabilities only."""
    if not _running_as_root():
        return []
    return _drop_root() if kernel_runs_as_nobody(sandbox, writable) else _drop_capabilities()


def kernel_runs_as_nobody(sandbox: Sandbox, writable: list[Path]) -> bool:
    """As root, whether the kernel runs as `nobody`: under bubblewrap always, under Landlock
    where nobody can pass every directory above the writable ones (not under /root)."""
    if not _running_as_root():
        return False
    if sandbox.mechanism == "bubblewrap":
        return True
    return sandbox.as_nobody and all(_others_can_traverse(path.parent) for path in writable)


def _others_can_traverse(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _nobody_can_run_the_kernel() -> bool:
    """Whether `nobody` can read this Python and kernel_boot.py (tried once, as root)."""
    probe = f"open({str(KERNEL_BOOT)!r}).close(); import ipykernel"
    try:
        done = subprocess.run(
            [*_drop_root(), sys.executable, "-c", probe],
            capture_output=True,
            timeout=60,
            check=False,
            cwd="/",
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def prepare_writable(path: Path, as_nobody: bool) -> None:
    """Make `path` writable by the sandboxed kernel (owned by `nobody` when it runs as that)."""
    if as_nobody:
        os.chown(path, NOBODY, NOBODY)


def kernel_uid(sandbox: Sandbox) -> int:
    """The real uid the kernel runs as: `nobody` when we are root and a sandbox is in force."""
    if _running_as_root() and sandbox.isolated:
        return NOBODY  # as nobody, or with the real uid nobody (_drop_capabilities)
    return os.getuid()


def _with_limits(sandbox: Sandbox) -> Sandbox:
    """`sandbox` with what enforces its process and memory limits here, and notes on them."""
    user_namespace = sandbox.mechanism == "bubblewrap" and not _running_as_root()
    mechanism = find_mechanism(user_namespace)
    resources = "resources: rlimits on CPU time and file size, per process"
    protections = (*sandbox.protections, *mechanism.protections(), resources)
    missing = (*sandbox.missing, *mechanism.gaps())
    return replace(sandbox, limits=mechanism, protections=protections, missing=missing)


def _unix_socket_note() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(protections, missing) for Unix sockets on this architecture."""
    if seccomp_filters.unix_socket_filter() is None:
        return (), ("Unix sockets: not filtered (no seccomp filter for this CPU)",)
    return (UNIX_SOCKETS,), ()


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
            return _with_limits(found)
        reasons.append(found)
    if choice in ("auto", "landlock"):
        landlock = _try_landlock()
        if isinstance(landlock, Sandbox):
            return _with_limits(replace(landlock, note="; ".join(reasons)))
        reasons.append(landlock)
    return _with_limits(_none("; ".join(reasons)))


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
    sockets, missing = _unix_socket_note()
    protections = (*BWRAP_PROTECTIONS, "network: none unless --code-network", *sockets)
    return Sandbox("bubblewrap", protections, missing=missing)


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
        "processes: no new privileges, killed with the run (process group, parent death); what "
        "the code starts is killed after each call (the kernel is their subreaper)",
        "environment: minimal variables, no secrets",
    ]
    sockets, no_sockets = _unix_socket_note()
    protections += sockets
    missing = [*LANDLOCK_MISSING, *no_sockets]
    if not network:
        missing.append("network: not isolated (no seccomp filter for this CPU, Landlock < 4)")
    if abi >= 6:
        protections.append("signals and abstract Unix sockets: kept inside the sandbox")
    else:
        missing.append("signals: the code can signal the user's other processes (Landlock < 6)")
    as_nobody = _running_as_root() and _nobody_can_run_the_kernel()
    if as_nobody:
        protections.append(
            "identity: runs as the user nobody where nobody can reach the run's directories "
            "(else with the effective uid root, without capabilities)"
        )
    elif _running_as_root():
        missing.append(
            "identity: runs with the effective uid root, without capabilities, because the user "
            f"nobody cannot read this Python ({sys.prefix}); make the directories above it "
            "traversable (chmod o+x) to run the kernel as nobody"
        )
    return Sandbox(
        "landlock",
        tuple(protections),
        missing=tuple(missing),
        as_nobody=as_nobody,
    )


def _none(note: str) -> Sandbox:
    return Sandbox("none", (), missing=_MISSING_ALL, note=note)
