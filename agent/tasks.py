"""Task files: an automation kept in a TOML file that people review, share, and run by hand
(`agent run -t FILE`) or on a schedule (`agent schedule add NAME --task FILE`).

A task file holds a prompt template with typed parameters, the settings its runs get (its
`[settings]` table takes `config.toml`'s keys, checked by the same table), MCP servers inline
(in `mcp_config.json`'s shape), a time limit, and where the answer goes: a file, or JSON
checked against a schema. Relative paths are relative to the file.

Parameters are data, never code: the prompt names them as `{name}` (plain names only: no
attribute, index, conversion or format spec), and each placeholder is replaced by its value
in one pass, so a value that itself contains `{other}`, `$HOME` or `{0.__class__}` stays as
it was written. Nothing in a task file or a value is evaluated.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from agent.config import Settings, validate, values_from_table
from agent.errors import AgentError, ConfigError
from agent.paths import cache_dir, write_atomically

Value = str | int | float | bool
TOP_KEYS = (
    "description",
    "prompt",
    "parameters",
    "settings",
    "mcp_servers",
    "time_limit",
    "output",
)
PARAMETER_KEYS = ("type", "default", "description", "choices")
PARAMETER_TYPES = ("string", "integer", "number", "boolean", "choice")
OUTPUT_KEYS = ("file", "schema")
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_FENCE = re.compile(r"\A\s*```(?:json)?[ \t]*\n(.*?)\n?```\s*\Z", re.DOTALL | re.IGNORECASE)


class TaskError(ConfigError):
    """A task file, or a parameter given to it, cannot be used (exit 2); the message names
    the file and the key."""


class TaskOutputError(AgentError):
    """A run's answer is not what the task's output asks for, or cannot be written: the run
    failed (exit 1), and nothing was written."""

    exit_code = 1


@dataclass(frozen=True)
class Parameter:
    """One typed parameter; no default means it is required."""

    name: str
    type: str = "string"
    default: Value | None = None
    choices: tuple[str, ...] = ()
    description: str = ""

    @property
    def required(self) -> bool:
        """Whether a run must be given it (it has no default)."""
        return self.default is None


@dataclass(frozen=True)
class Output:
    """Where the answer goes: `file` (atomically replaced), checked as JSON against `schema`."""

    file: Path | None = None
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Task:
    """A task file as read: its content's sha256, and each part checked."""

    path: Path  # absolute
    sha256: str
    prompt: str
    description: str = ""
    parameters: tuple[Parameter, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)  # the keys it sets, typed
    mcp_servers: dict[str, Any] | None = None  # inline, as mcp_config.json's "mcpServers"
    time_limit_s: float | None = None
    output: Output = field(default_factory=Output)

    def parameter(self, name: str) -> Parameter | None:
        """The parameter called `name`, if the task has one."""
        return next((p for p in self.parameters if p.name == name), None)

    def record(self, values: dict[str, Value]) -> dict[str, Any]:
        """What a run's history keeps of the task: the file, its hash, the parameters."""
        return {"file": str(self.path), "sha256": self.sha256, "parameters": values}


# --- reading a task file ---------------------------------------------------------------------


def file_sha256(path: Path) -> str | None:
    """The sha256 of the file's bytes; None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def load_task(path: Path) -> Task:
    """Read and check a task file; `TaskError` (one line: the file, the key, what to fix)."""
    shown = str(path)
    path = path.expanduser().resolve()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TaskError(f"task file {shown}: not found") from None
    except OSError as exc:
        raise TaskError(f"task file {shown}: cannot be read ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TaskError(f"{shown}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise TaskError(f"{shown}: not valid TOML: {exc}") from None
    return _Reader(shown, path.parent).task(data, path, hashlib.sha256(raw).hexdigest())


class _Reader:
    """Checks each part of a parsed task file; errors name the file and the key."""

    def __init__(self, shown: str, folder: Path) -> None:
        self.shown = shown
        self.folder = folder

    def fail(self, key: str, problem: str) -> TaskError:
        return TaskError(f"{self.shown}: {key}: {problem}")

    def task(self, data: dict[str, Any], path: Path, sha256: str) -> Task:
        unknown = sorted(set(data) - set(TOP_KEYS))
        if unknown:
            raise TaskError(
                f"{self.shown}: unknown key(s) {', '.join(unknown)}; a task file has "
                f"{', '.join(TOP_KEYS)}"
            )
        prompt = data.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise self.fail("prompt", 'missing: give the task\'s text, e.g. prompt = "..."')
        description = data.get("description", "")
        if not isinstance(description, str):
            raise self.fail("description", "must be a string")
        parameters = self.parameters(data.get("parameters", {}))
        self.placeholders(prompt, parameters)
        settings = self.settings(data.get("settings", {}))
        servers = self.mcp_servers(data.get("mcp_servers"), settings)
        return Task(
            path=path,
            sha256=sha256,
            prompt=prompt,
            description=description,
            parameters=parameters,
            settings=settings,
            mcp_servers=servers,
            time_limit_s=self.time_limit(data.get("time_limit")),
            output=self.output(data.get("output", {})),
        )

    def parameters(self, table: Any) -> tuple[Parameter, ...]:
        if not isinstance(table, dict):
            raise self.fail("parameters", 'must be tables: [parameters.NAME] with type = "..."')
        return tuple(self.parameter(name, entry) for name, entry in table.items())

    def parameter(self, name: str, entry: Any) -> Parameter:
        key = f"parameters.{name}"
        if not name.isidentifier():
            raise self.fail(key, "a parameter's name is letters, digits and _ (not first a digit)")
        if not isinstance(entry, dict):
            raise self.fail(key, 'must be a table, e.g. {type = "string", default = "..."}')
        unknown = sorted(set(entry) - set(PARAMETER_KEYS))
        if unknown:
            raise self.fail(
                key, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(PARAMETER_KEYS)}"
            )
        kind = entry.get("type", "string")
        if kind not in PARAMETER_TYPES:
            raise self.fail(f"{key}.type", f"must be one of {', '.join(PARAMETER_TYPES)}")
        choices = entry.get("choices")
        if kind == "choice":
            if not isinstance(choices, list) or not choices:
                raise self.fail(f"{key}.choices", "a choice needs a list of the allowed values")
            if not all(isinstance(c, str) for c in choices):
                raise self.fail(f"{key}.choices", "must be strings")
        elif choices is not None:
            raise self.fail(f"{key}.choices", 'only a parameter of type = "choice" has choices')
        description = entry.get("description", "")
        if not isinstance(description, str):
            raise self.fail(f"{key}.description", "must be a string")
        parameter = Parameter(name, kind, None, tuple(choices or ()), description)
        if "default" in entry:
            try:
                parameter = replace(parameter, default=_typed(parameter, entry["default"]))
            except ValueError as exc:
                raise self.fail(f"{key}.default", str(exc)) from None
        return parameter

    def placeholders(self, prompt: str, parameters: tuple[Parameter, ...]) -> None:
        declared = {p.name for p in parameters}
        for name in _placeholders(prompt, self.fail):
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise self.fail(
                    "prompt",
                    f"{{{name}}} is not a parameter (declared: {known}); declare "
                    f"[parameters.{name}], or write {{{{{name}}}}} for the text {{{name}}}",
                )

    def settings(self, table: Any) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail("settings", "must be a table: [settings] with config.toml's keys")
        values = values_from_table(table, f"{self.shown}: settings")
        for name, value in values.items():
            if isinstance(value, Path):
                values[name] = self.here(value)
            elif isinstance(value, tuple) and value and isinstance(value[0], Path):
                values[name] = tuple(self.here(v) for v in value)
        if "model" in values and (self.folder / values["model"]).exists():
            values["model"] = str(self.here(Path(values["model"])))
        try:
            validate(replace(Settings(), **values), by_key=True)
        except ConfigError as exc:
            raise self.fail("settings", str(exc)) from None
        for plugin in values.get("tool_files", ()):
            if not plugin.is_file():
                raise self.fail("settings.tool_files", f"{plugin} is not a file")
        if "mcp_config" in values:
            from agent.tools.mcp_config import load_mcp_config

            try:
                load_mcp_config(values["mcp_config"])
            except ConfigError as exc:
                raise self.fail("settings.mcp_config", str(exc)) from None
        return values

    def mcp_servers(self, table: Any, settings: dict[str, Any]) -> dict[str, Any] | None:
        if table is None:
            return None
        if not isinstance(table, dict):
            raise self.fail("mcp_servers", 'must be tables: [mcp_servers.NAME] command = "..."')
        if "mcp_config" in settings:
            raise self.fail("mcp_servers", "give the servers here or settings.mcp_config, not both")
        from agent.tools.mcp_config import parse_mcp_servers

        parse_mcp_servers(f"{self.shown}: mcp_servers", table)
        return {name: self.command_here(entry) for name, entry in table.items()}

    def command_here(self, server: dict[str, Any]) -> dict[str, Any]:
        """A server whose command is a relative path (it has a `/`): relative to the file."""
        command = server.get("command")
        if isinstance(command, str) and "/" in command and not Path(command).is_absolute():
            return {**server, "command": str(self.here(Path(command)))}
        return server

    def time_limit(self, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise self.fail("time_limit", "must be a number of seconds above zero, e.g. 600")
        return float(value)

    def output(self, table: Any) -> Output:
        if not isinstance(table, dict):
            raise self.fail("output", 'must be a table: [output] file = "answer.md"')
        unknown = sorted(set(table) - set(OUTPUT_KEYS))
        if unknown:
            raise self.fail(
                "output", f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(OUTPUT_KEYS)}"
            )
        file = table.get("file")
        if file is not None and (not isinstance(file, str) or not file.strip()):
            raise self.fail("output.file", "must be a file name")
        schema = table.get("schema")
        return Output(
            file=None if file is None else self.here(Path(file)),
            schema=None if schema is None else self.schema(schema),
        )

    def schema(self, value: Any) -> dict[str, Any]:
        from jsonschema.exceptions import SchemaError
        from jsonschema.validators import validator_for

        if isinstance(value, str):
            where = self.here(Path(value))
            try:
                value = json.loads(where.read_text(encoding="utf-8"))
            except OSError as exc:
                raise self.fail("output.schema", f"{where}: {exc.strerror}") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise self.fail("output.schema", f"{where} is not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise self.fail("output.schema", "a JSON schema (a table), or a .json file's name")
        try:
            validator_for(value).check_schema(value)
        except SchemaError as exc:
            raise self.fail("output.schema", f"not a valid JSON schema: {exc.message}") from None
        return value

    def here(self, path: Path) -> Path:
        """A path from the file, relative to the file's folder."""
        path = path.expanduser()
        return path if path.is_absolute() else (self.folder / path).resolve()


def _placeholders(prompt: str, fail: Callable[[str, str], TaskError]) -> list[str]:
    """The parameter names `{name}` in the prompt; `{{` and `}}` are literal braces."""
    try:
        parts = list(string.Formatter().parse(prompt))
    except ValueError as exc:
        raise fail("prompt", f"{exc}; write {{{{ and }}}} for literal braces") from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            written = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise fail(
                "prompt",
                f"{{{written}}}: a placeholder is a parameter's plain name, like {{city}} "
                "(write {{ and }} for literal braces)",
            )
        names.append(name)
    return names


# --- parameters --------------------------------------------------------------------------------


def _typed(parameter: Parameter, value: Any) -> Value:
    """A TOML default as the parameter's type; ValueError saying what is wrong."""
    kind = parameter.type
    if kind in ("string", "choice") and isinstance(value, str):
        if kind == "choice" and value not in parameter.choices:
            raise ValueError(f"must be one of {', '.join(parameter.choices)}, not {value!r}")
        return value
    if kind == "integer" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "boolean" and isinstance(value, bool):
        return value
    raise ValueError(f"must be {_a(kind)}, not {value!r}")


def _from_text(parameter: Parameter, text: str) -> Value:
    """A value given on the command line as the parameter's type; ValueError if it is not."""
    kind = parameter.type
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            pass
    elif kind == "number":
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
    elif kind == "boolean" and text.strip().lower() in _TRUE + _FALSE:
        return text.strip().lower() in _TRUE
    elif kind == "choice":
        if text in parameter.choices:
            return text
        raise ValueError(f"must be one of {', '.join(parameter.choices)}, not {text!r}")
    elif kind == "string":
        return text
    raise ValueError(f"must be {_a(kind)}, not {text!r}")


def _a(kind: str) -> str:
    return {"integer": "an integer", "number": "a number", "boolean": "true or false"}.get(
        kind, f"a {kind}"
    )


def parse_params(items: Iterable[str]) -> dict[str, str]:
    """`--param KEY=VALUE` options as a mapping (a later KEY wins)."""
    given: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TaskError(f"--param {item!r}: write it as KEY=VALUE")
        given[key.strip()] = value
    return given


def bind(task: Task, given: dict[str, str]) -> dict[str, Value]:
    """The parameters' values: those given (checked against their types), else the defaults;
    `TaskError` for an unknown one, a wrong type, or a required one not given."""
    names = [p.name for p in task.parameters]
    values: dict[str, Value] = {}
    for key, text in given.items():
        parameter = task.parameter(key)
        if parameter is None:
            takes = ", ".join(names) or "none"
            raise TaskError(f"{task.path.name}: no parameter {key!r} (it takes: {takes})")
        try:
            values[key] = _from_text(parameter, text)
        except ValueError as exc:
            raise TaskError(f"{task.path.name}: parameter {key!r} {exc}") from None
    for parameter in task.parameters:
        if parameter.name in values:
            continue
        if parameter.default is None:
            raise TaskError(
                f"{task.path.name}: parameter {parameter.name!r} is required: give "
                f"--param {parameter.name}=VALUE"
            )
        values[parameter.name] = parameter.default
    return values


def render_prompt(task: Task, values: dict[str, Value]) -> str:
    """The prompt with each `{name}` replaced by its value, as plain text, in one pass."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(task.prompt):
        out.append(literal)
        if name is not None:
            out.append(_text(values[name]))
    return "".join(out)


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# --- settings and output -----------------------------------------------------------------------


def task_settings(task: Task) -> dict[str, Any]:
    """The task's settings as overrides for `load_settings` (its inline MCP servers written to
    a file named by their content, which `mcp_config` then names)."""
    values = dict(task.settings)
    if task.mcp_servers is not None:
        text = json.dumps({"mcpServers": task.mcp_servers}, indent=1, sort_keys=True) + "\n"
        name = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = cache_dir() / "tasks" / f"mcp-{name}.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, text)
        values["mcp_config"] = path
    return values


def checked_json(task: Task, answer: str) -> str:
    """The answer as JSON valid against the task's schema (a ```json fence taken off);
    `TaskOutputError` with the first problem."""
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    assert task.output.schema is not None
    fenced = _FENCE.match(answer)
    text = (fenced.group(1) if fenced else answer).strip()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise TaskOutputError(
            f"the answer is not the JSON the task's output asks for ({exc})"
        ) from None
    schema = task.output.schema
    error = best_match(validator_for(schema)(schema).iter_errors(value))
    if error is not None:
        raise TaskOutputError(
            f"the answer does not match the task's output schema: {error.message} "
            f"(at {error.json_path})"
        )
    return text


def deliver(task: Task, answer: str) -> Path | None:
    """Check the answer as the task's output says and write it to the output file,
    atomically; the file written, if any. Nothing is written when the check fails."""
    text = answer if task.output.schema is None else checked_json(task, answer)
    target = task.output.file
    if target is None:
        return None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, text.rstrip("\n") + "\n")
    except OSError as exc:
        raise TaskOutputError(f"cannot write the answer to {target}: {exc.strerror}") from None
    return target
