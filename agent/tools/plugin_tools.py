"""Plugin tools: how they are found and loaded (what a plugin author uses is `agent.plugins`).

Sources, in this order (the first tool of a name wins; later ones are reported):
- `*.py` files (not starting with `_`) in the project's `tools/` and the user's tool
  directories (`agent.paths.user_tools_dirs`), then files given with `--tool FILE`;
- installed packages with an entry point in the group `agent.tools` that names a module,
  a `BaseTool` subclass, an `@tool` function, or a list of those.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import keyword
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
from qwen_agent.tools.base import TOOL_REGISTRY, BaseTool, is_tool_schema

from agent.errors import ConfigError, PluginError, ToolError
from agent.paths import shipped_tools_dir, user_tools_dirs
from agent.plugins import ENTRY_POINT_GROUP, TOOL_MARK, installed_entry_points
from agent.tools.invoke import parse_arguments
from agent.tools.schema import FunctionSchema, function_schema
from agent.tools.toolset import ToolEntry


class FunctionTool(BaseTool):
    """An `@tool` function as a Qwen-Agent tool."""

    def __init__(self, func: Callable[..., Any], schema: FunctionSchema) -> None:
        self.name = schema.name
        self.description = schema.description
        self.parameters = schema.parameters
        self.func = func
        super().__init__()

    def call(self, params: str | dict[str, Any], **kwargs: Any) -> str:
        """Check the arguments against the schema, call the function, return text."""
        arguments = parse_arguments(self.name, params)
        unknown = sorted(set(arguments) - set(self.parameters["properties"]))
        if unknown:
            expected = ", ".join(self.parameters["properties"]) or "none"
            raise ToolError(
                f"{self.name}: unknown argument(s) {', '.join(unknown)}; expected: {expected}"
            )
        try:
            jsonschema.validate(arguments, self.parameters)
        except jsonschema.ValidationError as exc:
            where = ".".join(map(str, exc.absolute_path)) or "arguments"
            raise ToolError(f"{self.name}: {where}: {exc.message}") from None
        result = self.func(**arguments)
        return result if isinstance(result, str) else json_text(result)


def json_text(value: Any) -> str:
    """A tool's non-text result as JSON text."""
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class ToolSource:
    """Where tools came from: `source` as listed, `group` to select them by, `where` in errors."""

    source: str
    group: str
    where: str = ""


@dataclass
class PluginTools:
    """The tools found, one-line problems, and the sources (file stems, entry point names)
    that failed to load."""

    entries: list[ToolEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)


def tool_dirs() -> list[Path]:
    """The directories searched for tool files: the shipped tools', then the user's."""
    return [shipped_tools_dir(), *user_tools_dirs()]


def load_plugin_tools(extra_files: Sequence[Path] = ()) -> PluginTools:
    """Every plugin tool from the tool directories, `extra_files` and entry points."""
    found = PluginTools()
    files = [f for d in tool_dirs() if d.is_dir() for f in sorted(d.glob("[!_]*.py"))]
    for path in [*files, *extra_files]:
        _load_file(Path(path), found)
    for point in installed_entry_points(ENTRY_POINT_GROUP):
        _load_entry_point(point, found)
    return found


def _load_file(path: Path, found: PluginTools) -> None:
    where = str(path)
    if not path.is_file():
        found.failed.add(path.stem)
        found.problems.append(f"{where}: no such tool file; check the --tool path")
        return
    try:
        module = _import_file(path.resolve())
    except Exception as exc:
        found.failed.add(path.stem)
        found.problems.append(
            f"{where}: cannot import it ({_error_at(exc, path)}); "
            "fix the file, or move it out of the tools directory"
        )
        return
    _add_all(_module_tools(module), ToolSource(where, path.stem), found)


def _import_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    name = f"_agent_tool_{path.stem}_{digest}"
    if name in sys.modules:  # loaded before in this process: reuse (registered names stay)
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError("not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        for registered in [n for n, cls in TOOL_REGISTRY.items() if cls.__module__ == name]:
            del TOOL_REGISTRY[registered]  # so that fixing the file and loading again works
        raise
    return module


def _load_entry_point(point: EntryPoint, found: PluginTools) -> None:
    dist = point.dist.name if point.dist else point.module
    where = f"package {dist} (entry point {point.name} = {point.value})"
    try:
        loaded = point.load()
    except Exception as exc:
        found.failed.add(point.name)
        found.problems.append(
            f"{where}: cannot import it ({type(exc).__name__}: {exc}); "
            f"fix or uninstall the package (pip uninstall {dist})"
        )
        return
    items = loaded if isinstance(loaded, list | tuple) else [loaded]
    candidates: list[Any] = []
    for item in items:
        candidates.extend(_module_tools(item) if isinstance(item, ModuleType) else [item])
    _add_all(candidates, ToolSource(f"package:{dist}", point.name, where), found)


def _module_tools(module: ModuleType) -> list[Any]:
    """The `@register_tool` classes and `@tool` functions a module defines."""
    classes = [cls for cls in TOOL_REGISTRY.values() if cls.__module__ == module.__name__]
    functions = [
        value
        for value in vars(module).values()
        if callable(value) and hasattr(value, TOOL_MARK) and value.__module__ == module.__name__
    ]
    return [*classes, *functions]


def _add_all(candidates: Iterable[Any], origin: ToolSource, found: PluginTools) -> None:
    for candidate in candidates:
        try:
            instance = as_tool(candidate)
        except PluginError as exc:
            found.problems.append(f"{origin.where or origin.source}: {exc}")
            continue
        found.entries.append(ToolEntry(instance, origin.source, origin.group))


def as_tool(candidate: Any) -> BaseTool:
    """A `BaseTool` instance from a `BaseTool` subclass or an `@tool` function."""
    if inspect.isclass(candidate) and issubclass(candidate, BaseTool):
        return _instantiate(candidate)
    if callable(candidate) and hasattr(candidate, TOOL_MARK):
        name = getattr(candidate, TOOL_MARK)
        try:
            return FunctionTool(candidate, function_schema(candidate, name))
        except PluginError as exc:
            raise PluginError(f"tool {name!r}: {exc}") from None
    raise PluginError(
        f"{candidate!r} is not a tool; give a BaseTool subclass, an @tool function, "
        "a module defining them, or a list of those"
    )


def _instantiate(cls: type[BaseTool]) -> BaseTool:
    name = cls.name or cls.__name__
    schema = {"name": name, "description": cls.description, "parameters": cls.parameters}
    if isinstance(cls.parameters, dict) and not is_tool_schema(schema):
        raise PluginError(
            f"tool {name!r}: Qwen-Agent rejects its schema; `description` must be a str and "
            '`parameters` exactly {"type": "object", "properties": {...}, "required": [...]}'
        )
    try:
        return cls()
    except Exception as exc:
        raise PluginError(
            f"tool {name!r} ({cls.__name__}) cannot be created with no arguments "
            f"({type(exc).__name__}: {exc}); give it a name and an __init__ that needs none"
        ) from None


def _error_at(exc: BaseException, path: Path) -> str:
    """`Type: message at line N` for an error raised while importing `path`."""
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
    return f"{type(exc).__name__}: {message}" + (f" at line {line}" if line else "")


TEMPLATE = '''\
"""{name}: a tool for the agent. Edit it, then check what the model sees:

    agent tools show {name}
    agent tools call {name} '{{"text": "hello", "times": 2}}'

The model sees the function's name, the first paragraph of its docstring, and one
parameter per argument: its type from the type hint (str, int, float, bool, list[...],
dict, Literal[...], X | None), its description from the `Args:` section below.
Arguments with a default are optional.
"""

from agent.plugins import ToolError, tool


@tool
def {name}(text: str, times: int = 1) -> str:
    """Repeat a piece of text (say here what your tool does: the model reads it).

    Args:
        text: The text to repeat.
        times: How many times to repeat it, 1 to 10.
    """
    # Raise ToolError for a problem the model should read and correct; any other exception
    # also becomes an error result (its type and message), and the run goes on.
    if not 1 <= times <= 10:
        raise ToolError("times must be between 1 and 10")
    # Return a str, or anything JSON can encode (it is sent to the model as JSON).
    return " ".join([text] * times)
'''


def new_tool_file(name: str) -> Path:
    """Write a commented `@tool` template to `<first user tools dir>/<name>.py`."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ConfigError(
            f"tool name {name!r} must be a Python identifier (letters, digits, _), e.g. my_tool"
        )
    path = user_tools_dirs()[0] / f"{name}.py"
    if path.exists():
        raise ConfigError(f"{path} already exists; edit it, or pick another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEMPLATE.format(name=name), encoding="utf-8")
    return path
