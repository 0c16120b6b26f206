"""`agent doctor`: what works on this machine and what does not, each with what to do about it."""

from __future__ import annotations

import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.config import Settings
from agent.errors import AgentError
from agent.paths import (
    agent_home,
    config_file,
    packaged_mcp_config,
    shipped_tools_dir,
    user_mcp_config,
    user_tools_dirs,
)


@dataclass(frozen=True)
class Check:
    """One finding: `ok` is False for a problem, None for a plain note."""

    name: str
    ok: bool | None
    detail: str


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order the user should read them."""
    return [
        *file_checks(settings),
        *sandbox_checks(settings),
        model_check(settings),
        *mcp_checks(settings),
        gpu_check(),
    ]


def file_checks(settings: Settings) -> list[Check]:
    """The version, and which files are in force: config, MCP servers, tool directories."""
    config = config_file()
    if settings.mcp_config == packaged_mcp_config():
        servers = (
            f"{settings.mcp_config} (the packaged defaults; {user_mcp_config()} replaces them)"
        )
    elif settings.mcp_config == user_mcp_config():
        servers = f"{settings.mcp_config} (yours: it replaces the packaged defaults)"
    else:
        servers = f"{settings.mcp_config} (given: --mcp-config or AGENT_MCP_CONFIG)"
    tools = [f"{shipped_tools_dir()} (shipped)"]
    tools += [f"{d}{'' if d.is_dir() else ' (none yet)'}" for d in user_tools_dirs()]
    return [
        Check("agent", None, f"{__version__} (Python {platform.python_version()})"),
        Check("data", None, str(agent_home())),
        Check("config", None, f"{config}{'' if config.is_file() else ' (none: the defaults)'}"),
        Check("mcp servers", None, servers),
        Check("tools from", None, "; ".join(tools)),
    ]


def sandbox_checks(settings: Settings) -> list[Check]:
    """Which sandbox the code interpreter gets, what it protects and what it does not."""
    from agent.sandbox.detect import detect
    from agent.sandbox.limits import Limits

    sandbox = detect(settings.sandbox)
    if sandbox.isolated:
        note = f" ({sandbox.note})" if sandbox.note else ""
        summary = sandbox.summary(settings.code_network, Limits.from_settings(settings))
        head = Check("sandbox", True, summary + note)
    elif settings.unsafe_code:
        head = Check("sandbox", False, f"none ({sandbox.note}); unsafe code allowed: NO isolation")
    else:
        head = Check("sandbox", False, f"none ({sandbox.note}); code is refused (--unsafe-code)")
    notes = [Check("  protects", None, item) for item in sandbox.protections]
    notes += [Check("  does not", None, item) for item in sandbox.missing]
    if settings.code_network:
        notes.append(Check("  does not", None, "network: on (--code-network)"))
    return [head, *notes]


def model_check(settings: Settings) -> Check:
    """The model is a local directory with weights, in the Hugging Face cache, or remote."""
    if settings.model_server:
        return Check("model", None, f"served by {settings.model_server} (not checked)")
    path = Path(settings.model).expanduser()
    if path.is_dir():
        found = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
        return Check("model", found, f"{path}" + ("" if found else ": no weight files in it"))
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(settings.model, local_files_only=True)
    except Exception:
        return Check("model", None, f"{settings.model} is not downloaded yet (first run does it)")
    return Check("model", True, f"{settings.model} cached at {local}")


def mcp_checks(settings: Settings) -> list[Check]:
    """Each MCP server's command is on PATH; `uvx` answers when a server uses it."""
    from agent.tools.mcp_tools import load_mcp_config

    try:
        servers = load_mcp_config(settings.mcp_config)
    except AgentError as exc:
        return [Check("mcp config", False, str(exc))]
    checks = []
    for server in servers:
        if server.command is None:
            checks.append(Check(f"mcp {server.name}", None, f"remote: {server.url}"))
            continue
        found = shutil.which(server.command)
        detail = found or f"{server.command!r} is not on PATH"
        checks.append(Check(f"mcp {server.name}", found is not None, detail))
    if any(server.command == "uvx" for server in servers) and shutil.which("uvx"):
        checks.append(_uvx_check())
    return checks


def _uvx_check() -> Check:
    try:
        done = subprocess.run(
            ["uvx", "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("uvx", False, str(exc))
    return Check("uvx", done.returncode == 0, (done.stdout or done.stderr).strip())


def gpu_check() -> Check:
    """CUDA as torch sees it (a note either way: the CPU works too)."""
    try:
        import torch
    except ImportError:
        return Check("gpu", None, "torch is not installed")
    if torch.cuda.is_available():
        return Check("gpu", True, torch.cuda.get_device_name(0))
    return Check("gpu", None, "no CUDA device: the model runs on the CPU")
