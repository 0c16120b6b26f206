"""Settings: defaults < config file (`$AGENT_HOME/config.toml`) < environment < flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from agent.backends.local_model import DEFAULT_KV_CACHE_MB
from agent.errors import ConfigError
from agent.paths import config_file, project_root

DEFAULT_MODEL = "Qwen/Qwen3-0.6B-GPTQ-Int8"


@dataclass(frozen=True)
class SamplingPreset:
    """Qwen3's recommended sampling for one mode."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float


THINKING_PRESET = SamplingPreset(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
NON_THINKING_PRESET = SamplingPreset(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know; `None` sampling values mean "the mode's preset"."""

    model: str = DEFAULT_MODEL
    model_server: str | None = None
    api_key: str | None = None
    device: str = "auto"
    threads: int | None = None
    engine: str = "auto"  # auto (native on CPU, transformers on CUDA), native or transformers
    kv_cache_mb: int = DEFAULT_KV_CACHE_MB  # memory kept for reusing prompt prefixes across calls
    thinking: bool = False
    show_thinking: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float = 0.0
    max_new_tokens: int = 2048
    seed: int | None = None
    max_steps: int = 8  # rounds of tool calls before the model must answer with tools off
    max_repeats: int = 2  # runs of one identical call (same name and arguments) per task
    constrain: bool = True  # grammar-constrained tool calls in the local backend
    require_tool: bool = False  # the first model call must be a tool call
    mcp_config: Path = field(default_factory=lambda: project_root() / "mcp_config.json")
    strict_mcp: bool = False
    mcp_start_timeout: float = 60.0
    tool_timeout: float = 120.0
    code_timeout: float = 30.0
    code_output_limit: int = 20_000
    code_image_limit: int = 5_000_000  # bytes per image
    code_network: bool = False
    unsafe_code: bool = False  # run code even where no sandbox works
    sandbox: str = "auto"  # auto (bubblewrap, else Landlock), bubblewrap or landlock
    code_memory_mb: int = 2048
    code_cpu_s: int = 600
    code_processes: int = 128
    code_file_size_mb: int = 1024
    tools: tuple[str, ...] | None = None  # None: every tool; (): none
    tool_files: tuple[Path, ...] = ()
    strict_tools: bool = False
    tool_result_limit: int = 20_000
    system_prompt: str = "You are a helpful assistant."
    debug: bool = False

    def sampling(self) -> SamplingPreset:
        """The effective sampling: the mode's preset with any explicit overrides."""
        preset = THINKING_PRESET if self.thinking else NON_THINKING_PRESET
        return SamplingPreset(
            temperature=preset.temperature if self.temperature is None else self.temperature,
            top_p=preset.top_p if self.top_p is None else self.top_p,
            top_k=preset.top_k if self.top_k is None else self.top_k,
            min_p=preset.min_p if self.min_p is None else self.min_p,
        )


ENVIRONMENT = {
    "AGENT_MODEL": "model",
    "AGENT_MODEL_SERVER": "model_server",
    "AGENT_API_KEY": "api_key",
    "AGENT_DEVICE": "device",
    "AGENT_THREADS": "threads",
    "AGENT_ENGINE": "engine",
    "AGENT_KV_CACHE_MB": "kv_cache_mb",
    "AGENT_MAX_STEPS": "max_steps",
    "AGENT_MCP_CONFIG": "mcp_config",
}


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _field_types()[name]
    try:
        if kind.startswith("tuple"):
            return _coerce_list(kind, value)
        if "Path" in kind:
            return Path(str(value)).expanduser()
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except ValueError:
        raise ConfigError(
            f"{source}: '{name}' must be a {_kind_name(kind)}, not {value!r}"
        ) from None


def _coerce_list(kind: str, value: Any) -> tuple[Any, ...]:
    """A TOML list, or a comma-separated string, as a tuple of str (or Path)."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str | Path) for v in value):
        raise ValueError(value)
    items = [str(v).strip() for v in value if str(v).strip()]
    return tuple(Path(v).expanduser() for v in items) if "Path" in kind else tuple(items)


def _kind_name(kind: str) -> str:
    return "list of strings" if kind.startswith("tuple") else kind.split(" ")[0]


def _from_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix or remove the file") from None
    known = _field_types()
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return {name: _coerce(name, value, str(path)) for name, value in data.items()}


def _from_environment() -> dict[str, Any]:
    return {
        name: _coerce(name, os.environ[var], f"environment variable {var}")
        for var, name in ENVIRONMENT.items()
        if os.environ.get(var)
    }


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from defaults, the config file, the environment and `overrides` (flags)."""
    layers: dict[str, Any] = {}
    layers.update(_from_file(config_file()))
    layers.update(_from_environment())
    layers.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return replace(Settings(), **layers)
