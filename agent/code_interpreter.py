"""The `code_interpreter` tool: Python code run in a Jupyter kernel that keeps its state.

One kernel per tool instance, started on the first call in the run's work directory and
shut down by `close()`. Each call has a wall-clock timeout and an output cap. The kernel
runs as an ordinary child process of ours, with no isolation of any kind.
"""

import base64
import json
import queue
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import json5
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager
from qwen_agent.tools.base import BaseTool, register_tool

from agent.errors import ToolError

_START_TIMEOUT_S = 60.0  # a cold kernel start takes 1-3 s; a loaded machine may need more
_INTERRUPT_GRACE_S = 2.0  # how long an interrupted kernel has to become idle before it is killed
_POLL_S = 0.2  # how often a silent kernel is checked for being alive
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


class _Kernel:
    """A running ipykernel of the current interpreter, and a client connected to it."""

    def __init__(self, cwd: Path) -> None:
        specs = KernelSpecManager(kernel_dirs=[])  # only ipykernel's own spec: sys.executable
        self.manager = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
        # Keep our stdout clean for `--json`; log only errors (not the warning that loopback
        # TCP is unencrypted: its messages are signed with a key only we hold).
        self.manager.start_kernel(
            cwd=str(cwd),
            stdout=subprocess.DEVNULL,
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
        self.client = self.manager.client()
        self.client.start_channels()
        try:
            self.client.wait_for_ready(timeout=_START_TIMEOUT_S)
        except RuntimeError as exc:
            self.kill()
            raise ToolError(f"the Python kernel failed to start: {exc}") from exc

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


class _Output:
    """What one call printed and displayed, capped at `limit` characters."""

    def __init__(self, limit: int, work_dir: Path) -> None:
        self.limit = limit
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
            path = self.work_dir / f"image-{uuid.uuid4().hex[:8]}.png"
            path.write_bytes(base64.b64decode(data["image/png"]))
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


@register_tool("code_interpreter", allow_overwrite=True)
class CodeInterpreter(BaseTool):
    """Runs Python code in one stateful Jupyter kernel per instance (no sandbox yet)."""

    description = "Python code interpreter, which can be used to execute Python code."
    parameters = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "The python code."}},
        "required": ["code"],
    }

    def __init__(
        self, work_dir: Path, *, timeout_s: float = 30.0, output_limit: int = 20_000
    ) -> None:
        super().__init__()
        self.work_dir = Path(work_dir).resolve()
        self.timeout_s = timeout_s
        self.output_limit = output_limit
        self._kernel: _Kernel | None = None

    def call(self, params: str | dict[str, Any], **kwargs: Any) -> str:
        """Run the code; return its output, or raise `ToolError` if it failed or timed out."""
        code = _parse_code(params)
        kernel = self._started_kernel()
        output = _Output(self.output_limit, self.work_dir)
        msg_id = kernel.client.execute(code, allow_stdin=False)
        ending = kernel.wait(msg_id, time.monotonic() + self.timeout_s, output.on_message)
        if ending == "timeout":
            raise ToolError(self._stop_timed_out(kernel, msg_id, output))
        if ending == "died":
            self.close()
            raise ToolError(
                "the kernel died while running the code (did it exit or run out of memory?); "
                "its state was lost; the next call starts a fresh kernel."
                + _labelled("Output before it died", output.text())
            )
        if output.error:
            raise ToolError(output.error + _labelled("Output and traceback", output.text()))
        return output.text() or "Finished execution."

    def close(self) -> None:
        """Shut the kernel down (it is started again by the next call). Safe to repeat."""
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            kernel.kill()

    def _started_kernel(self) -> _Kernel:
        if self._kernel is None:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._kernel = _Kernel(self.work_dir)
        return self._kernel

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
