"""The `code_interpreter` tool: Python code run in a Jupyter kernel that keeps its state.

One kernel per tool instance, started on the first call in the run's work directory and
shut down by `close()`. Each call has a wall-clock timeout and an output cap. The kernel
runs in the sandbox `agent.sandbox.detect` finds (bubblewrap, else Landlock) with rlimits, and
talks to us over IPC sockets in a private runtime directory, not TCP. Without a working
sandbox it refuses to start unless unsafe code is allowed.
"""

import base64
import contextlib
import json
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import json5
import psutil
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from qwen_agent.tools.base import BaseTool, register_tool

from agent.config import Settings
from agent.errors import ToolError
from agent.paths import new_run_dir
from agent.sandbox import detect as sb
from agent.sandbox.limits import KernelLimits, kernel_limits

_START_TIMEOUT_S = 60.0  # a cold kernel start takes 1-3 s; a loaded machine may need more
_INTERRUPT_GRACE_S = 1.0  # how long an interrupted kernel has to become idle before it is killed
_POLL_S = 0.2  # how often a silent kernel is checked for being alive
# The sandbox kills the kernel when its parent dies (bwrap --die-with-parent, confine.py's
# PR_SET_PDEATHSIG), and Linux counts the parent *thread*: a kernel started from a run's worker
# thread would die with that thread, at the end of the first chat turn. So every kernel is
# started from this one thread, which lives as long as the process.
_KERNEL_STARTER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kernel-starter")
_LEFTOVER_KILL_S = 5.0  # how long killing what the code left running may take (a fork bomb)
_ANSI_ESCAPE = re.compile(r"(?:\x1B[@-_]|[\x80-\x9F])[0-?]*[ -/]*[@-~]")

_Ending = Literal["idle", "timeout", "died"]
_Message = dict[str, Any]


def _parse_code(params: str | dict[str, Any]) -> str:
    """The code from model-style arguments: a JSON(5) string or a dict with a "code" string."""
    if isinstance(params, str):
        text = params
        try:
            params = json5.loads(text)
        except ValueError:
            try:  # models often put literal newlines inside the JSON string
                params = json.loads(text, strict=False)
            except ValueError:
                raise ToolError(
                    'code_interpreter arguments must be a JSON object like {"code": "print(1)"}'
                ) from None
    code = params.get("code") if isinstance(params, dict) else None
    if not isinstance(code, str):
        raise ToolError('code_interpreter needs a "code" argument: a string of Python code')
    return code


class _SandboxedManager(KernelManager):
    """A KernelManager whose kernel command is wrapped in the sandbox and rlimits."""

    wrap: Callable[[list[str]], list[str]] = staticmethod(lambda argv: argv)
    as_nobody = False  # the kernel runs as `nobody`: its files must be nobody's

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        return self.wrap(super().format_kernel_cmd(extra_arguments))

    def write_connection_file(self, **kwargs: Any) -> None:
        super().write_connection_file(**kwargs)
        sb.prepare_writable(Path(self.connection_file), self.as_nobody)


@dataclass(frozen=True)
class KernelOptions:
    """How the kernel is isolated and limited."""

    limits: sb.Limits = field(default_factory=sb.Limits)
    network: bool = False
    allow_unsafe: bool = False
    sandbox: str = "auto"  # one of sandbox.SANDBOX_CHOICES


def kernel_options(settings: Settings) -> KernelOptions:
    """The kernel options the settings ask for."""
    return KernelOptions(
        sb.Limits.from_settings(settings),
        network=settings.code_network,
        allow_unsafe=settings.unsafe_code,
        sandbox=settings.sandbox,
    )


def _kernel_env(work_dir: Path, runtime: Path) -> dict[str, str]:
    """A minimal environment: none of the user's variables (API keys, tokens) get through."""
    return {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work_dir),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "IPYTHONDIR": str(runtime / "ipython"),
        "MPLCONFIGDIR": str(runtime / "matplotlib"),
        "XDG_CACHE_HOME": str(runtime / "cache"),
        "TMPDIR": str(runtime),
    }


def _parent_watch(sandbox: sb.Sandbox) -> list[str]:
    """In a PID namespace the kernel's parent is pid 1, which ipykernel takes for its parent
    having died; bwrap's --die-with-parent does that job there."""
    return ["--IPKernelApp.parent_handle=0"] if sandbox.mechanism == "bubblewrap" else []


def _kernel_process(manager: KernelManager) -> psutil.Process:
    """The kernel's own process: the launched one, or in bubblewrap the one below it that runs
    kernel_boot.py."""
    launched = psutil.Process(manager.provisioner.process.pid)  # type: ignore[union-attr]
    for process in [launched, *launched.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            if process.cmdline()[1:2] == [str(sb.KERNEL_BOOT)]:  # python kernel_boot.py ...
                return process
    return launched


class _Kernel:
    """A running ipykernel of the current interpreter in the sandbox, and a client of it."""

    def __init__(
        self, cwd: Path, options: KernelOptions, sandbox: sb.Sandbox, log_dir: Path | None
    ) -> None:
        self.runtime = Path(tempfile.mkdtemp(prefix="agent-kernel-"))  # short: socket paths
        self.log: BinaryIO | None = None
        self.limits: KernelLimits | None = None
        as_nobody = sb.kernel_runs_as_nobody(sandbox, [cwd, self.runtime])
        sb.prepare_writable(self.runtime, as_nobody)
        sb.prepare_writable(cwd, as_nobody)
        specs = KernelSpecManager(kernel_dirs=[])  # only ipykernel's own spec: sys.executable
        self.manager = _SandboxedManager(
            kernel_name="python3",
            kernel_spec_manager=specs,
            transport="ipc",
            ip=str(self.runtime / "kernel"),
            connection_file=str(self.runtime / "connection.json"),
        )
        assert self.manager.kernel_spec is not None
        self.manager.kernel_spec.interrupt_mode = "message"  # a signal would reach bwrap only
        self.manager.as_nobody = as_nobody
        try:
            uid = sb.kernel_uid(sandbox)
            enforced = self.limits = kernel_limits(sandbox.limits, options.limits, uid)
        except OSError as exc:
            self._remove_files()
            raise ToolError(f"the Python kernel's limits could not be set up: {exc}") from exc
        self.manager.wrap = lambda argv: sb.kernel_command(
            argv, sandbox, [cwd, self.runtime], options.limits, options.network, enforced
        )
        # keep our stdout clean for `--json`; the kernel's warnings go to the run's logs
        if log_dir is not None:
            self.log = open(log_dir / "kernel.log", "ab")  # noqa: SIM115
        try:
            self.manager.start_kernel(
                cwd=str(cwd),
                env=_kernel_env(cwd, self.runtime),
                stdout=subprocess.DEVNULL,
                stderr=self.log,
                extra_arguments=["--IPKernelApp.log_level=ERROR", *_parent_watch(sandbox)],
            )
        except Exception as exc:
            self._remove_files()
            raise ToolError(f"the Python kernel failed to start: {exc}") from exc
        self.client = self.manager.client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=_START_TIMEOUT_S)
        except RuntimeError as exc:
            self.kill()
            raise ToolError(f"the Python kernel failed to start: {exc}") from exc
        self.process = _kernel_process(self.manager)

    def kill_leftovers(self) -> int:
        """Kill every process the code started that is still running; how many there were.

        The kernel is a child subreaper (kernel_boot.py), so all of them are its descendants,
        even those that left their session; it reaps them before the next call."""
        killed: set[int] = set()
        deadline = time.monotonic() + _LEFTOVER_KILL_S
        while time.monotonic() < deadline:
            try:
                alive = [
                    p
                    for p in self.process.children(recursive=True)
                    if p.status() != psutil.STATUS_ZOMBIE
                ]
            except psutil.Error:  # the kernel itself is gone
                break
            if not alive:
                break
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.kill()
                    killed.add(process.pid)
            time.sleep(0.01)
        return len(killed)

    def wait(self, msg_id: str, deadline: float, on_message: Callable[[_Message], None]) -> _Ending:
        """Pass each output message of request `msg_id` to `on_message` until it finishes."""
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                msg = self.client.get_iopub_msg(timeout=min(remaining, _POLL_S))
            except queue.Empty:
                if not self.manager.is_alive():
                    return "died"
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "idle"
            on_message(msg)
        return "timeout"

    def kill(self) -> None:
        """Kill the kernel's whole process group and close the connection."""
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
        self._remove_files()

    def _remove_files(self) -> None:
        """Remove the kernel's files and its cgroup, killing whatever is still in it."""
        if self.limits is not None:
            self.limits.close()
        shutil.rmtree(self.runtime, ignore_errors=True)
        if self.log is not None:
            self.log.close()


class _Output:
    """What one call printed and displayed, capped at `limit` characters."""

    def __init__(self, limit: int, work_dir: Path, image_limit: int = 5_000_000) -> None:
        self.limit = limit
        self.image_limit = image_limit
        self.work_dir = work_dir
        self.parts: list[str] = []
        self.size = 0
        self.dropped = 0
        self.error: str | None = None  # "ename: evalue", once the code raised

    def add(self, text: str) -> None:
        kept = text[: max(self.limit - self.size, 0)]
        self.parts.append(kept)
        self.size += len(kept)
        self.dropped += len(text) - len(kept)

    def on_message(self, msg: _Message) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            self.add(content["text"])
        elif kind in ("execute_result", "display_data"):
            self.add_data(content["data"])
        elif kind == "error":
            self.error = f"{content['ename']}: {content['evalue']}"
            self.add(_ANSI_ESCAPE.sub("", "\n".join(content["traceback"])) + "\n")

    def on_stream(self, msg: _Message) -> None:
        """Keep late printed output only (after an interrupt: not its KeyboardInterrupt)."""
        if msg["msg_type"] == "stream":
            self.add(msg["content"]["text"])

    def add_data(self, data: dict[str, Any]) -> None:
        if "image/png" in data:
            png = base64.b64decode(data["image/png"])
            if len(png) > self.image_limit:
                self.add(f"[image of {len(png)} bytes dropped: the limit is {self.image_limit}]\n")
                return
            path = self.work_dir / f"image-{uuid.uuid4().hex[:8]}.png"
            path.write_bytes(png)
            self.add(f"![image]({path})\n")
        elif "text/plain" in data:
            self.add(data["text/plain"] + "\n")

    def text(self) -> str:
        text = "".join(self.parts)
        if self.dropped:
            text += (
                f"\n[... {self.dropped} more characters dropped: "
                f"output is limited to {self.limit} characters per call]"
            )
        return text


@dataclass(frozen=True)
class SpareKernel:
    """A kernel started ahead of need, with the work directory it runs in."""

    kernel: _Kernel
    work_dir: Path


def _start_spare(options: KernelOptions) -> SpareKernel:
    run_dir = new_run_dir()
    work_dir, log_dir = run_dir / "work", run_dir / "logs"
    work_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    sandbox = sb.detect(options.sandbox)
    if not sandbox.isolated and not options.allow_unsafe:
        raise ToolError("no sandbox works here: no spare kernel")
    return SpareKernel(_Kernel(work_dir, options, sandbox, log_dir), work_dir)


class KernelSpares:
    """One kernel kept started per kernel config, for the resident service: each is handed to
    exactly one interpreter (with its own fresh work directory), and another is started in its
    place, so a run's first code call does not wait for a kernel. No state is shared: a spare
    has run nothing before it is handed over."""

    def __init__(self) -> None:
        self._ready: dict[KernelOptions, Future[SpareKernel]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def prepare(self, options: KernelOptions) -> None:
        """Start a spare for `options`, unless one is ready or starting."""
        with self._lock:
            if not self._closed and options not in self._ready:
                self._ready[options] = _KERNEL_STARTER.submit(_start_spare, options)

    def take(self, options: KernelOptions) -> SpareKernel | None:
        """A started kernel for `options` (another is started in its place); None if none."""
        with self._lock:
            future = self._ready.pop(options, None)
        self.prepare(options)
        if future is None:
            return None
        try:
            spare = future.result()
        except Exception:  # it could not start: the caller starts one and says why
            return None
        if not spare.kernel.manager.is_alive():
            spare.kernel.kill()
            return None
        return spare

    def ready(self) -> int:
        """How many spares are started and waiting."""
        with self._lock:
            futures = list(self._ready.values())
        return sum(1 for f in futures if f.done() and f.exception() is None)

    def close(self) -> None:
        """Kill every spare (those starting, once started)."""
        with self._lock:
            self._closed = True
            futures, self._ready = list(self._ready.values()), {}
        for future in futures:
            with contextlib.suppress(Exception):
                future.result().kernel.kill()


@register_tool("code_interpreter", allow_overwrite=True)
class CodeInterpreter(BaseTool):
    """Runs Python code in one stateful, sandboxed Jupyter kernel per instance."""

    description = "Python code interpreter, which can be used to execute Python code."
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "The python code."}},
        "required": ["code"],
    }

    def __init__(
        self,
        work_dir: Path,
        *,
        timeout_s: float = 30.0,
        output_limit: int = 20_000,
        image_limit: int = 5_000_000,
        options: KernelOptions | None = None,
        log_dir: Path | None = None,
        spares: KernelSpares | None = None,
    ) -> None:
        super().__init__()
        self.work_dir = Path(work_dir).resolve()
        self.timeout_s = timeout_s
        self.output_limit = output_limit
        self.image_limit = image_limit
        self.options = options or KernelOptions()
        self.log_dir = log_dir  # the kernel's stderr goes to kernel.log there (else ours)
        self._kernel: _Kernel | None = None
        self._spares = spares  # the resident service's kernels started ahead of need
        if spares is not None:
            spares.prepare(self.options)
        # Finding the sandbox runs a probe or two (~0.3 s): started now, beside the model's
        # load, so the run's header (which names the sandbox) does not wait for it.
        self._sandbox = _KERNEL_STARTER.submit(sb.detect, self.options.sandbox)

    @property
    def sandbox(self) -> sb.Sandbox:
        """The isolation the kernel runs in (found once per process)."""
        return self._sandbox.result()

    def call(self, params: str | dict[str, Any], **kwargs: Any) -> str:
        """Run the code; return its output, or raise `ToolError` if it failed or timed out."""
        code = _parse_code(params)
        kernel = self._started_kernel()
        output = _Output(self.output_limit, self.work_dir, self.image_limit)
        msg_id = kernel.client.execute(code, allow_stdin=False)
        ending = kernel.wait(msg_id, time.monotonic() + self.timeout_s, output.on_message)
        if ending == "timeout":
            message = self._stop_timed_out(kernel, msg_id, output)
            raise ToolError(message + self._stopped_leftovers())
        if ending == "died":
            self.close()
            raise ToolError(
                "the kernel died while running the code (did it exit, or hit a memory, CPU time or "
                "process limit?); "
                "its state was lost; the next call starts a fresh kernel."
                + _labelled("Output before it died", output.text())
            )
        stopped = self._stopped_leftovers()
        if output.error:
            raise ToolError(
                output.error + _labelled("Output and traceback", output.text()) + stopped
            )
        return (output.text() or "Finished execution.") + stopped

    def interrupt(self) -> None:
        """Interrupt the code running now, if any (the call returns its KeyboardInterrupt)."""
        kernel = self._kernel
        if kernel is not None:
            with contextlib.suppress(Exception):  # a kernel that is gone has nothing to stop
                kernel.manager.interrupt_kernel()

    def close(self) -> None:
        """Shut the kernel down (it is started again by the next call). Safe to repeat."""
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            kernel.kill()

    def _started_kernel(self) -> _Kernel:
        if self._kernel is None:
            sandbox = self.sandbox
            if not sandbox.isolated and not self.options.allow_unsafe:
                raise ToolError(
                    f"code is not run: no sandbox works here ({sandbox.note}); "
                    "the user can allow unsafe code with --unsafe-code or "
                    "unsafe_code = true in config.toml"
                )
            spare = self._spares.take(self.options) if self._spares is not None else None
            if spare is not None:
                self._kernel, self.work_dir = spare.kernel, spare.work_dir
                return spare.kernel
            self.work_dir.mkdir(parents=True, exist_ok=True)
            start = _KERNEL_STARTER.submit(
                _Kernel, self.work_dir, self.options, sandbox, self.log_dir
            )
            self._kernel = start.result()
        return self._kernel

    def _stopped_leftovers(self) -> str:
        """Kill what the code left running (processes never outlive a call); a note if any."""
        count = self._kernel.kill_leftovers() if self._kernel is not None else 0
        if not count:
            return ""
        return f"\n\n(stopped {count} process{'es' if count > 1 else ''} the code left running)"

    def _stop_timed_out(self, kernel: _Kernel, msg_id: str, output: _Output) -> str:
        """Interrupt the code, kill the kernel if that fails; the error message to return."""
        kernel.manager.interrupt_kernel()
        deadline = time.monotonic() + _INTERRUPT_GRACE_S
        if kernel.wait(msg_id, deadline, output.on_stream) == "idle":
            outcome = "it was interrupted; the kernel's state is kept."
        else:
            self.close()
            outcome = (
                "it did not stop when interrupted, so the kernel was killed: its state was lost; "
                "the next call starts a fresh kernel."
            )
        return f"the code timed out after {self.timeout_s:g} s and {outcome}" + _labelled(
            "Output before the timeout", output.text()
        )


def _labelled(label: str, text: str) -> str:
    return f"\n\n{label}:\n{text}" if text else ""
