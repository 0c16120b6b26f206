"""The one table of settings, and how they are loaded.

Every setting is one field of `Settings`, declared with `setting(...)`: its type, default and
help text, and where it has them, its flag (and the option group that offers it), its
environment variable (`AGENT_<NAME>`), its allowed values. The command-line options
(`agent.cli.options`), the environment, the `config.toml` keys, the validation and the README's
settings table (`python -m agent.config`) all come from it.

Layers: defaults < config file (`$AGENT_HOME/config.toml`) < environment < flags.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 has no tomllib; tomli is the same parser, published apart
    import tomli as tomllib  # type: ignore[no-redef]

from agent.errors import ConfigError
from agent.paths import config_file, history_file, mcp_config_in_force

DEFAULT_MODEL = "Qwen/Qwen3-0.6B-GPTQ-Int8"
DEFAULT_KV_CACHE_MB = 1024
DEFAULT_DISK_CACHE_MB = 1024
CONTEXT_TOKENS = 32_768  # Qwen3-0.6B's context window
ENGINES = ("auto", "native", "transformers")
SANDBOXES = ("auto", "bubblewrap", "landlock")
SERVICE_MODES = ("auto", "off", "required")
ENV_PREFIX = "AGENT_"
# The option groups commands take flags from.
OPTION_GROUPS = ("model", "tools", "selection", "history", "chat", "service")
# Where a user's hook commands run (the plugin hooks of agent/plugins.py have the same points).
HOOK_POINTS = ("before_tool_call", "after_tool_call", "run_started", "run_finished")
HOOK_COMMAND_FORMS = (
    'a string ("notify-send done", split as a shell would split it, never run by one), '
    'a list of strings (["notify-send", "done"]), or a list of such lists for several commands'
)


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is drawn: from the settings to the sampler (agent/engine/sampling.py)
    as this one type. Temperature 0 means greedy (for tests, not for real use)."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)


# Qwen3's recommended sampling for each mode.
THINKING_PRESET = SamplingParams(temperature=0.6, top_p=0.95, top_k=20, min_p=0.0)
NON_THINKING_PRESET = SamplingParams(temperature=0.7, top_p=0.8, top_k=20, min_p=0.0)


Command = tuple[str, ...]  # an argv: the program, then its arguments


@dataclass(frozen=True)
class HookCommands:
    """The user's hook commands (`[hooks]` in config.toml): at each point, the commands run in
    order, each an argv run without a shell."""

    before_tool_call: tuple[Command, ...] = ()
    after_tool_call: tuple[Command, ...] = ()
    run_started: tuple[Command, ...] = ()
    run_finished: tuple[Command, ...] = ()

    @classmethod
    def parse(cls, value: Any, source: str) -> HookCommands:
        """From the `[hooks]` table (or its JSON form, as the service gets it): at each point
        one command or a list of them (`HOOK_COMMAND_FORMS`); `ConfigError` saying what to fix."""
        if isinstance(value, HookCommands):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{source}: 'hooks' must be a table ([hooks]) with the keys "
                + ", ".join(HOOK_POINTS)
            )
        unknown = sorted(set(value) - set(HOOK_POINTS))
        if unknown:
            raise ConfigError(
                f"{source}: unknown hook point(s) {', '.join(unknown)} in [hooks]; "
                f"known: {', '.join(HOOK_POINTS)}"
            )
        return cls(**{point: _hook_commands(point, value[point], source) for point in value})


def _hook_commands(point: str, value: Any, source: str) -> tuple[Command, ...]:
    """One point's commands: a string or a list of strings is one command; a list of lists,
    several. A leading `~/` in any argument is the home directory."""
    if isinstance(value, list | tuple) and not value:
        return ()
    if isinstance(value, list | tuple) and all(isinstance(v, list | tuple) for v in value):
        return tuple(_argv(point, item, source) for item in value)
    return (_argv(point, value, source),)


def _argv(point: str, value: Any, source: str) -> Command:
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: hooks.{point}: {exc} in {value!r}") from None
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: hooks.{point} must be {HOOK_COMMAND_FORMS}")
    if not value or not value[0]:
        raise ConfigError(f"{source}: hooks.{point} has an empty command")
    return tuple(os.path.expanduser(v) if v.startswith("~/") else v for v in value)


@dataclass(frozen=True)
class Bounds:
    """The range a number setting must lie in; `None` values are not checked."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # the low end itself is not allowed
    note: str = ""  # said after the range, e.g. "0: off"

    def allows(self, value: float) -> bool:
        """Whether `value` lies in the range."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        """The range as the error message says it: `>= 0`, `> 0`, `in (0, 1]`."""
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}]"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {_num(self.low)}"
        else:
            text = f"<= {_num(self.high or 0)}"
        return f"{text} ({self.note})" if self.note else text


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class SettingSpec:
    """What the table says of one setting besides its type and default."""

    help: str
    flag: str | None = None  # "--name", "--name/--no-name" (on and off), "--no-name" (sets off)
    group: str | None = None  # the option group that offers the flag (one of OPTION_GROUPS)
    env: bool = False  # read from the environment variable AGENT_<NAME>
    choices: tuple[str, ...] = ()
    bounds: Bounds | None = None
    metavar: str | None = None

    def label(self, name: str) -> str:
        """How errors name the setting: its flag when it has one, else its key."""
        return self.flag.split("/")[0] if self.flag else name


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    flag: str | bool | None = None,
    **spec: Any,
) -> Any:
    """A field of `Settings` with its table entry; `flag=True` derives `--the-name`."""
    entry: dict[str, Any] = {
        "spec": SettingSpec(help=help, flag=flag if isinstance(flag, str) else None, **spec)
    }
    if flag is True:
        entry["derive_flag"] = True
    if factory is not None:
        return field(default_factory=factory, metadata=entry)
    return field(default=default, metadata=entry)


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know; `None` sampling values mean "the mode's preset"."""

    model: str = setting(
        DEFAULT_MODEL,
        "hub id or local directory (default Qwen/Qwen3-0.6B-GPTQ-Int8)",
        flag=True,
        group="model",
        env=True,
    )
    model_server: str | None = setting(
        None,
        "use an OpenAI-compatible server (vLLM, SGLang) instead of a local model",
        flag=True,
        group="model",
        env=True,
        metavar="URL",
    )
    api_key: str | None = setting(
        None, "API key for --model-server", flag=True, group="model", env=True
    )
    device: str = setting("auto", "auto (default), cpu or cuda", flag=True, group="model", env=True)
    threads: int | None = setting(
        None,
        "CPU threads for the local model",
        flag=True,
        group="model",
        env=True,
        bounds=Bounds(low=0, low_open=True),
    )
    engine: str = setting(
        "auto",
        "local engine: auto (default: native on CPU, transformers on CUDA), native or transformers",
        flag=True,
        group="model",
        env=True,
        choices=ENGINES,
    )
    kv_cache_mb: int = setting(
        DEFAULT_KV_CACHE_MB,
        "memory for reusing prompt prefixes across model calls (default 1024; 0: off)",
        flag=True,
        group="model",
        env=True,
        bounds=Bounds(low=0, note="0: no reuse"),
    )
    disk_cache_mb: int = setting(
        DEFAULT_DISK_CACHE_MB,
        "disk for reusing the system prompt and tools' prefix across processes (default "
        "1024; 0: off)",
        flag=True,
        group="model",
        env=True,
        bounds=Bounds(low=0, note="0: off"),
    )
    lookup_decoding: bool = setting(
        True,
        "local native engine: draft tokens from the context (quoted tool results) and verify "
        "them in one pass; output distributed as without, greedy the same tokens (default on)",
        flag="--lookup-decoding/--no-lookup-decoding",
        group="model",
        env=True,
    )
    thinking: bool = setting(
        False,
        "let the model think before answering (default off)",
        flag="--thinking/--no-thinking",
        group="model",
    )
    show_thinking: bool = setting(False, "show the model's thinking", flag=True, group="model")
    temperature: float | None = setting(
        None,
        "sampling temperature (default: the mode's preset, 0.6 thinking, 0.7 not)",
        flag=True,
        group="model",
        bounds=Bounds(low=0),
    )
    top_p: float | None = setting(
        None,
        "nucleus sampling (default: 0.95 thinking, 0.8 not)",
        flag=True,
        group="model",
        bounds=Bounds(low=0, high=1, low_open=True),
    )
    top_k: int | None = setting(
        None,
        "sample from the k likeliest tokens (default 20)",
        flag=True,
        group="model",
        bounds=Bounds(low=0, note="0 turns it off"),
    )
    min_p: float | None = setting(
        None,
        "drop tokens below this share of the likeliest one (default 0)",
        flag=True,
        group="model",
        bounds=Bounds(low=0, high=1),
    )
    presence_penalty: float = setting(
        0.0, "0-2 against repetition", flag=True, group="model", bounds=Bounds(low=0, high=2)
    )
    max_new_tokens: int = setting(
        2048,
        "generation length per model call",
        flag=True,
        group="model",
        bounds=Bounds(low=0, low_open=True),
    )
    seed: int | None = setting(None, "seed for reproducible sampling", flag=True, group="model")
    constrain: bool = setting(
        True,
        "local model: do not constrain tool calls to the tools' schemas (default on)",
        flag="--no-constrain",
        group="model",
    )
    require_tool: bool = setting(
        False,
        "the first model call must call a tool (constrained from its first token locally)",
        flag=True,
        group="model",
    )
    max_steps: int = setting(
        8,
        "rounds of tool calls before the model must answer with tools off (default 8)",
        flag=True,
        group="model",
        env=True,
        bounds=Bounds(low=1),
    )
    max_repeats: int = setting(
        2,
        "times one identical tool call may run in a task (default 2)",
        flag=True,
        group="model",
        bounds=Bounds(low=1),
    )
    mcp_config: Path = setting(
        factory=mcp_config_in_force,
        help="MCP servers file",
        flag=True,
        group="tools",
        env=True,
        metavar="PATH",
    )
    strict_mcp: bool = setting(
        False, "fail when an MCP server does not start", flag=True, group="tools"
    )
    mcp_start_timeout: float = setting(60.0, "seconds an MCP server has to start")
    tool_timeout: float = setting(120.0, "seconds per MCP tool call")
    code_timeout: float = setting(
        30.0,
        "seconds per code interpreter call",
        flag=True,
        group="tools",
        bounds=Bounds(low=0, low_open=True),
    )
    code_output_limit: int = setting(20_000, "characters of code output kept per call")
    code_image_limit: int = setting(5_000_000, "bytes per image the code interpreter saves")
    code_network: bool = setting(
        False, "let the code interpreter reach the network (pip, HTTP)", flag=True, group="tools"
    )
    unsafe_code: bool = setting(
        False, "run code without isolation where no sandbox works", flag=True, group="tools"
    )
    sandbox: str = setting(
        "auto",
        "code isolation: auto (bubblewrap, else Landlock + seccomp), bubblewrap, landlock",
        flag=True,
        group="tools",
        choices=SANDBOXES,
    )
    code_memory_mb: int = setting(
        2048,
        "kernel memory limit",
        flag="--code-memory",
        group="tools",
        metavar="MB",
        bounds=Bounds(low=0, note="0: no limit"),
    )
    code_cpu_s: int = setting(600, "CPU seconds the kernel may use")
    code_processes: int = setting(128, "processes the kernel may run")
    code_file_size_mb: int = setting(1024, "largest file the kernel may write, in MB")
    tools: tuple[str, ...] | None = setting(
        None,
        "only these tools: tool names, MCP server names or plugin file names",
        flag="--tools/--no-tools",
        group="selection",
        metavar="NAME,NAME",
    )
    tool_files: tuple[Path, ...] = setting(
        (),
        "also load the tools in this Python file (repeatable)",
        flag="--tool",
        group="tools",
        metavar="FILE",
    )
    strict_tools: bool = setting(
        False, "fail when a plugin tool does not load", flag=True, group="tools"
    )
    tool_result_limit: int = setting(
        20_000, "characters of a tool result the model sees", bounds=Bounds(low=0, low_open=True)
    )
    resource_limit: int = setting(
        20_000,
        "characters of an MCP resource attached to a message (--attach, @server:uri) the model "
        "sees",
        bounds=Bounds(low=0, low_open=True),
    )
    sampling_max_tokens: int = setting(
        1024,
        "most tokens the model generates for an MCP server's sampling request",
        bounds=Bounds(low=0, low_open=True),
    )
    system_prompt: str = setting("You are a helpful assistant.", "the system prompt")
    compact_at: float = setting(
        0.8,
        "share of the context window at which older turns are compacted into a summary the "
        "model writes (and, inside a run, older tool results cut)",
        env=True,
        bounds=Bounds(low=0, high=1, low_open=True),
    )
    history: Path = setting(
        factory=history_file,
        help="the run history database (SQLite); default history.sqlite3 in the data directory",
        env=True,
    )
    log: bool = setting(
        True, "do not keep this run in the run history", flag="--no-log", group="history"
    )
    hooks: HookCommands = setting(
        HookCommands(),
        "commands run before and after each tool call and at a run's start and end: a "
        "`[hooks]` table, keys before_tool_call, after_tool_call, run_started, run_finished "
        '(see "Hooks")',
    )
    hook_timeout: float = setting(
        10.0,
        "seconds a hook command may run; one still running then is killed, with its process "
        "group, and counts as failed (default 10)",
        env=True,
        bounds=Bounds(low=0, low_open=True),
    )
    approve: str = setting(
        "auto",
        "ask before tool calls (chat) and MCP sampling requests (SERVER-sampling; chat and "
        "run): auto (all but the read-only tools), all, code, none, or tool names",
        flag=True,
        group="chat",
        metavar="WHICH",
    )
    service: str = setting(
        "auto",
        "the resident service that keeps the model and tools warm: auto (default: use it, "
        "starting it when needed), off (--no-service: run in this process), required",
        flag="--service/--no-service",
        group="service",
        env=True,
        choices=SERVICE_MODES,
    )
    service_idle: float = setting(
        600.0,
        "seconds the resident service waits unused before it exits (default 600)",
        env=True,
        bounds=Bounds(low=0, low_open=True),
    )
    service_memory_mb: int = setting(
        4096,
        "memory the resident service keeps models in; the least recently used go beyond it",
        env=True,
        bounds=Bounds(low=0, low_open=True),
    )
    debug: bool = setting(
        False,
        "verbose logs on stderr; tracebacks in tool error results",
        flag=True,
        group="tools",
    )

    def sampling(self) -> SamplingParams:
        """The effective sampling: the mode's preset with any explicit overrides."""
        preset = THINKING_PRESET if self.thinking else NON_THINKING_PRESET
        return SamplingParams(
            temperature=preset.temperature if self.temperature is None else self.temperature,
            top_p=preset.top_p if self.top_p is None else self.top_p,
            top_k=preset.top_k if self.top_k is None else self.top_k,
            min_p=preset.min_p if self.min_p is None else self.min_p,
            presence_penalty=self.presence_penalty,
        )


def spec(item: Field[Any]) -> SettingSpec:
    """The table entry of one field of `Settings`."""
    entry: SettingSpec = item.metadata["spec"]
    if item.metadata.get("derive_flag"):
        return replace(entry, flag="--" + item.name.replace("_", "-"))
    return entry


def env_var(name: str) -> str:
    """The environment variable a setting is read from (when its entry says `env`)."""
    return ENV_PREFIX + name.upper()


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(Settings)}


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = _field_types()[name]
    if kind == "HookCommands":
        return HookCommands.parse(value, source)
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
    return values_from_table(data, str(path))


def values_from_table(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Settings from a TOML table with `config.toml`'s keys (config.toml itself, a task
    file's `[settings]`), each coerced to its type; a one-line error naming `source` for an
    unknown key or a value of the wrong type."""
    known = _field_types()
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return {name: _coerce(name, value, source) for name, value in data.items()}


def _from_environment() -> dict[str, Any]:
    found = {}
    for item in fields(Settings):
        var = env_var(item.name)
        if spec(item).env and os.environ.get(var):
            found[item.name] = _coerce(item.name, os.environ[var], f"environment variable {var}")
    return found


def validate(settings: Settings, by_key: bool = False) -> None:
    """Raise `ConfigError` for the first value the table does not allow (naming the setting
    by its flag, or by its key with `by_key`)."""
    for item in fields(Settings):
        entry, value = spec(item), getattr(settings, item.name)
        if entry.choices and value not in entry.choices:
            raise ConfigError(
                f"{item.name} must be one of {', '.join(entry.choices)}, not {value!r}"
            )
        if entry.bounds and value is not None and not entry.bounds.allows(value):
            label = item.name if by_key else entry.label(item.name)
            raise ConfigError(f"{label} must be {entry.bounds.describe()}")


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from defaults, the config file, the environment and `overrides` (flags),
    checked against the table."""
    layers: dict[str, Any] = {}
    layers.update(_from_file(config_file()))
    layers.update(_from_environment())
    layers.update({k: v for k, v in (overrides or {}).items() if v is not None})
    settings = replace(Settings(), **layers)
    validate(settings)
    return settings


def settings_from_values(values: dict[str, Any]) -> Settings:
    """Settings from plain values (as JSON holds them) with nothing else layered in; checked
    against the table. The resident service rebuilds a client's resolved settings with it."""
    known = _field_types()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
    given: dict[str, Any] = {
        name: None if value is None else _coerce(name, value, "settings")
        for name, value in values.items()
    }
    settings = replace(Settings(), **given)
    validate(settings)
    return settings


def settings_table() -> str:
    """The README's settings table (Markdown), made from the table."""
    rows = [
        "| `config.toml` key | flag | environment | default | allowed | what it does |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for item in fields(Settings):
        entry = spec(item)
        flag = f"`{entry.flag.replace('/', '` / `')}`" if entry.flag else ""
        env = f"`{env_var(item.name)}`" if entry.env else ""
        rows.append(
            f"| `{item.name}` | {flag} | {env} | {_shown_default(item)} | {_allowed(entry)} "
            f"| {entry.help.replace('|', '/')} |"
        )
    return "\n".join(rows) + "\n"


def _shown_default(item: Field[Any]) -> str:
    if item.name == "mcp_config":
        return "`mcp_config.json` in the data directory, else the packaged `time` and `fetch`"
    if item.name == "history":
        return "`history.sqlite3` in the data directory"
    value = item.default
    if isinstance(value, HookCommands):
        return "none"
    if value is None:
        return (
            "the mode's preset" if item.name in ("temperature", "top_p", "top_k", "min_p") else ""
        )
    if value == ():
        return ""
    return f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _allowed(entry: SettingSpec) -> str:
    if entry.choices:
        return ", ".join(f"`{choice}`" for choice in entry.choices)
    return entry.bounds.describe() if entry.bounds else ""


if __name__ == "__main__":
    sys.stdout.write(settings_table())
