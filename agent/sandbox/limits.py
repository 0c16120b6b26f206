"""Process and memory limits that count the sandbox's own processes, not the user's.

`RLIMIT_NPROC` counts every task of the process's real uid on the whole host (per user
namespace inside one): a desktop with a browser open already runs hundreds, so a process limit
of 128 set that way stops the kernel from starting, and every kernel of that uid shares one
budget. So the limits come from the first of these that works here (`find_mechanism`):

- **a cgroup of the kernel's own**, where this process may create one (as root, or in a
  writable cgroup v2 tree): v2 `pids.max` and `memory.max`, or v1's `pids` and `memory`
  hierarchies; it counts the kernel and what it starts, and nothing else;
- **a transient systemd scope** (`systemd-run --user --scope -p TasksMax -p MemoryMax`), where
  the user has a systemd user manager (the usual desktop): the same cgroup limits, delegated;
- **a user namespace** (bubblewrap as an ordinary user): `RLIMIT_NPROC` set inside it counts the
  namespace's processes only;
- else `RLIMIT_NPROC` set to the uid's current task count plus the limit, when the kernel
  starts: it always starts, but the uid's other processes share the headroom (said so).

Memory is also bounded per process by an address-space limit (kernel_boot.py), which gives
code a MemoryError rather than a killed kernel; a cgroup bounds the whole sandbox besides.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil

from agent.config import Settings

CGROUP_PARENT = "agent-sandbox"  # the cgroup v2 directory our kernels' cgroups go under
ENTER_CGROUP = Path(__file__).with_name("enter_cgroup.py")
_KILL_WAIT_S = 5.0  # how long emptying a cgroup (a fork bomb's processes) may take
_PROBE_TIMEOUT_S = 15


@dataclass(frozen=True)
class Limits:
    """Resource limits of the kernel, 0 meaning none: memory and processes for the whole
    sandbox where a cgroup is available, CPU time and file size per process (rlimits)."""

    memory_mb: int = 2048
    cpu_s: int = 600
    processes: int = 128
    file_size_mb: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits the settings ask for (`code_memory_mb`, `code_processes`...)."""
        return cls(
            memory_mb=settings.code_memory_mb,
            cpu_s=settings.code_cpu_s,
            processes=settings.code_processes,
            file_size_mb=settings.code_file_size_mb,
        )


@dataclass(frozen=True)
class LimitMechanism:
    """What enforces the process and memory limits on this host."""

    kind: str  # "cgroup v2", "cgroup v1", "systemd scope", "user namespace" or "uid count"
    memory_cgroup: bool = False  # whether the whole sandbox's memory is bounded too
    note: str = ""  # why no stronger mechanism is available

    @property
    def cgroup(self) -> bool:
        return self.kind in ("cgroup v2", "cgroup v1", "systemd scope")

    def describe(self, processes: int, memory_mb: int | None) -> str:
        """`processes 128 (cgroup v1), memory 2048 MB (cgroup v1)`, or what holds instead."""
        if not processes:
            count = "processes unlimited"
        elif self.kind == "uid count":
            count = f"processes: {processes} beyond the user's own count (no cgroup here)"
        else:
            count = f"processes {processes} ({self.kind})"
        if memory_mb is None:
            return count
        if not memory_mb:
            return f"{count}, memory unlimited"
        if self.memory_cgroup:
            return f"{count}, memory {memory_mb} MB ({self.kind})"
        return f"{count}, memory {memory_mb} MB per process (address space)"

    def protections(self) -> tuple[str, ...]:
        """Lines for `agent doctor`: what the process and memory limits count."""
        memory = "memory: the whole sandbox's (cgroup), and" if self.memory_cgroup else "memory:"
        lines = (f"{memory} an address-space limit per process",)
        if self.cgroup:
            return (f"processes: counted in a {self.kind} of the kernel's own", *lines)
        if self.kind == "user namespace":
            return ("processes: counted in the sandbox's own user namespace", *lines)
        return lines

    def gaps(self) -> tuple[str, ...]:
        """Lines for `agent doctor`'s "does not": where the limits are weaker than asked."""
        if self.kind != "uid count":
            return ()
        return (
            "processes: no cgroup or user namespace here, so the limit is the uid's own count "
            "plus it, set when the kernel starts: the uid's other processes share that "
            f"headroom ({self.note})",
        )


@dataclass
class KernelLimits:
    """One kernel's limits: `prefix` starts its command under them, `nproc` is the
    RLIMIT_NPROC to set on it (0: none), `close()` kills what is left and removes the cgroup."""

    prefix: list[str]
    nproc: int
    cgroups: list[Path]
    scope: str = ""  # a systemd scope's unit name

    def close(self) -> None:
        """Kill every process still in the kernel's cgroups and remove them. Safe to repeat."""
        if self.scope:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    ["systemctl", "--user", "kill", "--signal=SIGKILL", f"{self.scope}.scope"],
                    capture_output=True,
                    timeout=_PROBE_TIMEOUT_S,
                    check=False,
                )
        for cgroup in self.cgroups:
            _empty_and_remove(cgroup)
        self.cgroups = []


def _empty_and_remove(cgroup: Path) -> None:
    deadline = time.monotonic() + _KILL_WAIT_S
    while cgroup.is_dir() and time.monotonic() < deadline:
        try:
            pids = (cgroup / "cgroup.procs").read_text().split()
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            cgroup.rmdir()
        except FileNotFoundError:
            return
        except OSError:  # busy until the killed processes are reaped
            time.sleep(0.02)


def _cgroup_mounts() -> dict[str, Path]:
    """Mount points by controller (`pids`, `memory` for v1; `cgroup2` for the v2 tree)."""
    mounts: dict[str, Path] = {}
    with contextlib.suppress(OSError), open("/proc/self/mounts", encoding="utf-8") as table:
        for line in table:
            fields = line.split()
            if len(fields) < 4:
                continue
            if fields[2] == "cgroup2":
                mounts.setdefault("cgroup2", Path(fields[1]))
            elif fields[2] == "cgroup":
                for option in fields[3].split(","):
                    if option in ("pids", "memory"):
                        mounts.setdefault(option, Path(fields[1]))
    return mounts


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy of `controller` ("" for v2's)."""
    with open("/proc/self/cgroup", encoding="utf-8") as table:
        for line in table:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(",") or (not controller and controllers == ""):
                return path.lstrip("/")
    raise OSError(f"no {controller or 'v2'} cgroup in /proc/self/cgroup")


def _v2_parent(root: Path) -> Path:
    """`CGROUP_PARENT` under the v2 root with pids (and memory, if offered) delegated to it."""
    controllers = (root / "cgroup.controllers").read_text().split()
    if "pids" not in controllers:
        raise OSError("the cgroup v2 tree has no pids controller")
    wanted = [name for name in ("pids", "memory") if name in controllers]
    enable = " ".join(f"+{name}" for name in wanted)
    parent = root / CGROUP_PARENT
    parent.mkdir(exist_ok=True)
    (root / "cgroup.subtree_control").write_text(enable)
    (parent / "cgroup.subtree_control").write_text(enable)
    return parent


def _new_cgroups(kind: str, limits: Limits) -> list[Path]:
    """A fresh cgroup (one per v1 hierarchy) with `limits` written; OSError where it fails."""
    name = f"kernel-{uuid.uuid4().hex[:12]}"
    mounts = _cgroup_mounts()
    memory_bytes = str(limits.memory_mb * 2**20) if limits.memory_mb else ""
    made: list[Path] = []
    try:
        if kind == "cgroup v2":
            cgroup = _v2_parent(mounts["cgroup2"]) / name
            cgroup.mkdir()
            made.append(cgroup)
            (cgroup / "pids.max").write_text(str(limits.processes or "max"))
            if memory_bytes and (cgroup / "memory.max").exists():
                (cgroup / "memory.max").write_text(memory_bytes)
            return made
        cgroup = mounts["pids"] / _own_cgroup("pids") / name
        cgroup.mkdir()
        made.append(cgroup)
        (cgroup / "pids.max").write_text(str(limits.processes or "max"))
        if "memory" in mounts:
            with contextlib.suppress(OSError):  # memory is a bonus: the address space holds
                memory = mounts["memory"] / _own_cgroup("memory") / name
                memory.mkdir()
                made.append(memory)
                if memory_bytes:
                    (memory / "memory.limit_in_bytes").write_text(memory_bytes)
        return made
    except (OSError, KeyError, ValueError) as exc:
        for cgroup in reversed(made):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        raise OSError(f"{kind}: {exc}") from None


MEMORY_FILES = ("memory.max", "memory.limit_in_bytes")  # cgroup v2, v1


def _try_cgroup(kind: str) -> LimitMechanism | str:
    """A trial cgroup of `kind`, made and removed: whether it works here, and bounds memory."""
    try:
        made = _new_cgroups(kind, Limits())
    except OSError as exc:
        return str(exc)
    memory = any((cgroup / name).exists() for cgroup in made for name in MEMORY_FILES)
    for cgroup in made:
        _empty_and_remove(cgroup)
    return LimitMechanism(kind, memory_cgroup=memory)


def _try_systemd_scope() -> LimitMechanism | str:
    if shutil.which("systemd-run") is None:
        return "no systemd-run"
    try:
        done = subprocess.run(
            ["systemd-run", "--user", "--scope", "--quiet", "--collect", "-p", "TasksMax=8"]
            + ["-p", "MemoryMax=64M", "true"],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"systemd-run: {exc}"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"no systemd user scope ({reason})"
    return LimitMechanism("systemd scope", memory_cgroup=True)


@functools.cache
def find_mechanism(user_namespace: bool) -> LimitMechanism:
    """What can enforce the limits here, tried once per process; `user_namespace`: the sandbox
    gives the kernel a user namespace of its own (bubblewrap as an ordinary user)."""
    reasons = []
    for attempt in (
        functools.partial(_try_cgroup, "cgroup v2"),
        functools.partial(_try_cgroup, "cgroup v1"),
        _try_systemd_scope,
    ):
        found = attempt()
        if isinstance(found, LimitMechanism):
            return found
        reasons.append(found)
    if user_namespace:
        return LimitMechanism("user namespace")
    return LimitMechanism("uid count", note="; ".join(reasons))


def tasks_of_uid(uid: int) -> int:
    """How many tasks (threads) of real uid `uid` run on the host now."""
    count = 0
    for process in psutil.process_iter(["uids", "num_threads"]):
        info = process.info
        if info["uids"] is not None and info["uids"].real == uid:
            count += info["num_threads"] or 1
    return count


def kernel_limits(mechanism: LimitMechanism, limits: Limits, uid: int) -> KernelLimits:
    """The limits of one kernel about to start as real uid `uid`."""
    if mechanism.kind == "systemd scope":
        unit = f"agent-kernel-{uuid.uuid4().hex[:12]}"
        properties = [f"TasksMax={limits.processes or 'infinity'}"]
        properties.append(f"MemoryMax={f'{limits.memory_mb}M' if limits.memory_mb else 'infinity'}")
        prefix = ["systemd-run", "--user", "--scope", "--quiet", "--collect", f"--unit={unit}"]
        for item in properties:
            prefix += ["-p", item]
        return KernelLimits([*prefix, "--"], 0, [], scope=unit)
    if mechanism.cgroup:
        cgroups = _new_cgroups(mechanism.kind, limits)
        procs = [str(cgroup / "cgroup.procs") for cgroup in cgroups]
        return KernelLimits(
            [sys.executable, "-I", "-S", str(ENTER_CGROUP), *procs, "--"], 0, cgroups
        )
    if mechanism.kind == "user namespace" or not limits.processes:
        return KernelLimits([], limits.processes, [])
    return KernelLimits([], tasks_of_uid(uid) + limits.processes, [])
