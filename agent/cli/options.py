"""The option groups commands share, made from the settings table (`agent.config`).

`model_options`, `tool_options` and `selection_options` add the flags of every setting in
their group; `settings_from(flags)` turns what was given into `Settings` (unset flags leave
the config file and the environment in force).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import Field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import click

from agent.config import Settings, load_settings, settings_from_values, spec, validate

F = TypeVar("F", bound=Callable[..., Any])
_NO_TOOLS = "no_tools"  # the parameter of `--no-tools`, folded into `tools` by settings_from
_NO_PREFIX = "no_"  # `--x/--no-x` on a setting with choices: `--x WHICH`, and `--no-x` for off
# Where and how a command runs, not what a run is: never taken from a recorded run (the user's
# hooks of today apply to a fork or resume, not those in force when it was recorded).
_PLACE_SETTINGS = (
    "history", "log", "service", "service_idle", "service_memory_mb", "debug", "show_thinking",
    "api_key", "hooks", "hook_timeout",
)  # fmt: skip


def names(ctx: click.Context, param: click.Parameter, text: str | None) -> tuple[str, ...] | None:
    """A click callback: `a, b,c` as the names `("a", "b", "c")`."""
    if text is None:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _value_type(item: Field[Any]) -> Any:
    kind = str(item.type)
    if "Path" in kind:
        return click.Path(path_type=Path)
    return int if kind.startswith("int") else float if kind.startswith("float") else str


def _options(item: Field[Any]) -> list[Callable[[F], F]]:
    """The click options of one setting: its kind follows from its type and flag."""
    entry, kind = spec(item), str(item.type)
    assert entry.flag is not None
    metavar = "[" + "|".join(entry.choices) + "]" if entry.choices else entry.metavar
    # Choices are checked with the rest of the table (agent.config.validate), one message for all.
    common: dict[str, Any] = {"help": entry.help, "metavar": metavar, "default": None}
    if kind.startswith("bool"):
        del common["metavar"]
        if "/" in entry.flag:
            return [click.option(entry.flag, item.name, **common)]
        on = not entry.flag.startswith("--no-")
        return [click.option(entry.flag, item.name, flag_value=on, **common)]
    if kind.startswith("tuple") and "Path" in kind:  # repeatable: --tool FILE --tool FILE
        common["default"] = ()
        return [
            click.option(entry.flag, item.name, type=_value_type(item), multiple=True, **common)
        ]
    if entry.choices and "/" in entry.flag:  # --service WHICH, and --no-service for off
        given, off = entry.flag.split("/")
        return [
            click.option(given, item.name, **common),
            click.option(off, _NO_PREFIX + item.name, is_flag=True, default=False, help="off"),
        ]
    if kind.startswith("tuple"):  # --tools NAME,NAME, and --no-tools for none at all
        given, none = entry.flag.split("/")
        return [
            click.option(given, item.name, callback=names, **common),
            click.option(none, _NO_TOOLS, is_flag=True, default=False, help="no tools at all"),
        ]
    return [click.option(entry.flag, item.name, type=_value_type(item), **common)]


def _group(name: str) -> Callable[[F], F]:
    items = [item for item in fields(Settings) if spec(item).group == name]

    def add(command: F) -> F:
        for item in reversed(items):
            for option in reversed(_options(item)):
                command = option(command)
        return command

    return add


def setting_options(name: str) -> Callable[[F], F]:
    """The flags of one setting, for a command that takes it outside its group (`agent run
    --approve`)."""
    (item,) = [item for item in fields(Settings) if item.name == name]

    def add(command: F) -> F:
        for option in reversed(_options(item)):
            command = option(command)
        return command

    return add


model_options = _group("model")
tool_options = _group("tools")
selection_options = _group("selection")
history_options = _group("history")
chat_options = _group("chat")
service_options = _group("service")


def conversation_options(command: F) -> F:
    """Every option of a conversation with the agent (`agent chat`, `agent ui`): the model,
    tools, their selection, history, approval and the resident service."""
    for options in (
        service_options,
        chat_options,
        history_options,
        selection_options,
        tool_options,
        model_options,
    ):
        command = options(command)
    return command


def settings_from(
    flags: dict[str, Any], base: dict[str, Any] | None = None, **forced: Any
) -> Settings:
    """`Settings` with the given flags on top of `base` (a task file's settings), the
    environment and the config file."""
    return load_settings({**(base or {}), **given_flags(flags), **forced})


def recorded_settings_from(flags: dict[str, Any], recorded: dict[str, Any]) -> Settings:
    """A recorded run's settings (`History.run_settings`) with the given flags on top, for a
    fork, a resume or a replay of it; where and how the command runs (the history, the
    service, logging, the API key) are this command's, as for any other."""
    given = given_flags(flags)
    current = load_settings(given)
    known = {item.name for item in fields(Settings)}
    kept = {
        name: value
        for name, value in recorded.items()
        if name in known and name not in _PLACE_SETTINGS and given.get(name) is None
    }
    values = settings_from_values(kept)
    settings = replace(current, **{name: getattr(values, name) for name in kept})
    validate(settings)
    return settings


def given_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The settings the given flags set (flags not given are left out)."""
    known = {item.name for item in fields(Settings)}
    # A repeatable option not given is (): it leaves config.toml's list in force.
    given = {
        name: value
        for name, value in flags.items()
        if name in known and value != () and value is not None
    }
    if flags.get(_NO_TOOLS):
        if given.get("tools") is not None:
            raise click.UsageError("--tools and --no-tools cannot be used together")
        given["tools"] = ()
    for name in known:
        if flags.get(_NO_PREFIX + name) and name != "tools":
            if given.get(name) is not None:
                raise click.UsageError(f"--{name} and --no-{name} cannot be used together")
            given[name] = "off"
    return given


def json_option(help: str) -> Callable[[F], F]:
    """`--json`: machine-readable output, one JSON object per line."""
    return click.option("--json", "as_json", is_flag=True, help=help)
