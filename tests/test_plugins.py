"""Custom tools: discovery in tool directories and packages, `@tool` schemas, contained failures."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal, Optional

import pytest

from agent.config import Settings
from agent.errors import PluginError, UnknownToolError
from agent.plugins import tool
from agent.tools.invoke import invoke_tool
from agent.tools.plugin_tools import as_tool
from agent.tools.schema import function_schema
from agent.tools.toolset import Toolset, open_toolset
from tests.clirun import agent_cli, empty_mcp_config

# --- @tool schemas -----------------------------------------------------------------------------


def scalars(name: str, count: int, ratio: float, loud: bool) -> str:
    """Four scalar kinds.

    Args:
        name: Who to greet.
        count (int): How many times,
            on two lines.
        ratio: A fraction.
        loud: Shout or not.
    """
    return ""


def defaults(unit: Literal["c", "f"] = "c", ids: list[int] | None = None, depth: int = 2) -> str:
    """Defaults are optional; Literal is an enum; X | None is nullable.

    :param unit: The unit.
    :param ids: Row ids.
    """
    return ""


def containers(tags: list[str], options: dict[str, Any], level: Optional[Literal[1, 2]]) -> str:  # noqa: UP045
    """Lists, objects, Optional of a Literal."""
    return ""


def undocumented(flag: bool = False) -> str:
    return ""


SCHEMA_TABLE = [
    (
        scalars,
        "Four scalar kinds.",
        {
            "name": {"type": "string", "description": "Who to greet."},
            "count": {"type": "integer", "description": "How many times, on two lines."},
            "ratio": {"type": "number", "description": "A fraction."},
            "loud": {"type": "boolean", "description": "Shout or not."},
        },
        ["name", "count", "ratio", "loud"],
    ),
    (
        defaults,
        "Defaults are optional; Literal is an enum; X | None is nullable.",
        {
            "unit": {
                "type": "string",
                "enum": ["c", "f"],
                "description": "The unit.",
                "default": "c",
            },
            "ids": {
                "type": ["array", "null"],
                "items": {"type": "integer"},
                "description": "Row ids.",
                "default": None,
            },
            "depth": {"type": "integer", "default": 2},
        },
        [],
    ),
    (
        containers,
        "Lists, objects, Optional of a Literal.",
        {
            "tags": {"type": "array", "items": {"type": "string"}},
            "options": {"type": "object"},
            "level": {"type": ["integer", "null"], "enum": [1, 2, None]},
        },
        ["tags", "options", "level"],
    ),
    (undocumented, "", {"flag": {"type": "boolean", "default": False}}, []),
]


@pytest.mark.parametrize(("func", "description", "properties", "required"), SCHEMA_TABLE)
def test_tool_schema_from_signature_hints_and_docstring(
    func: Any, description: str, properties: dict[str, Any], required: list[str]
) -> None:
    schema = function_schema(func)
    assert (schema.name, schema.description) == (func.__name__, description)
    assert schema.parameters == {"type": "object", "properties": properties, "required": required}
    built = as_tool(tool(func))  # Qwen-Agent's own check runs in BaseTool.__init__
    assert built.function == {
        "name": func.__name__,
        "description": description,
        "parameters": schema.parameters,
    }


def with_set(values: set[int]) -> str:
    return ""


def with_union(value: int | str) -> str:
    return ""


def without_hint(value) -> str:
    return ""


def with_kwargs(**options: str) -> str:
    return ""


@pytest.mark.parametrize(
    ("func", "expected"),
    [
        (with_set, "parameter 'values' has unsupported type set[int]; use str, int"),
        (with_union, "parameter 'value' has unsupported type int | str; use str, int"),
        (without_hint, "parameter 'value' has no type hint; add one (str, int"),
        (with_kwargs, "parameter 'options': *args and **kwargs are not supported"),
    ],
)
def test_unsupported_signatures_say_which_parameter_and_the_fix(func: Any, expected: str) -> None:
    with pytest.raises(PluginError) as caught:
        function_schema(func)
    assert expected in str(caught.value)


def test_a_tool_function_is_called_with_checked_arguments() -> None:
    @tool(name="adder")
    def add(numbers: list[int], scale: float = 1.0) -> dict[str, float]:
        """Add numbers."""
        return {"sum": sum(numbers) * scale}

    adder = as_tool(add)
    assert add([1, 2]) == {"sum": 3.0}  # the function itself is unchanged
    assert invoke_tool(adder, '{"numbers": [1, 2, 3], scale: 2.5}').content == '{"sum": 15.0}'
    wrong = invoke_tool(adder, '{"numbers": ["x"]}')
    assert not wrong.ok and "adder: numbers.0: 'x' is not of type 'integer'" in wrong.content
    extra = invoke_tool(adder, {"numbers": [], "nums": 1})
    assert "unknown argument(s) nums; expected: numbers, scale" in extra.content
    missing = invoke_tool(adder, "{}")
    assert "'numbers' is a required property" in missing.content


# --- tool files --------------------------------------------------------------------------------

GREET = '''
from agent.plugins import ToolError, tool


@tool
def greet(name: str, times: int = 1) -> str:
    """Greet someone by name.

    Args:
        name: Who to greet.
        times: How many greetings.
    """
    if not name:
        raise ToolError("a name is needed")
    return " ".join([f"Hello, {name}!"] * times)


@tool
def crash(text: str) -> str:
    """Always fails."""
    raise RuntimeError(f"boom {text}")


@tool
def huge(size: int) -> str:
    """A long result."""
    return "x" * size
'''

REGISTERED = """
from qwen_agent.tools.base import BaseTool, register_tool


@register_tool("{name}")
class Upper(BaseTool):
    description = "Upper-case a text."
    parameters = {{
        "type": "object",
        "properties": {{"text": {{"type": "string"}}}},
        "required": ["text"],
    }}

    def call(self, params, **kwargs):
        return self._verify_json_format_args(params)["text"].upper()
"""


def write(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


def plugin_settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(mcp_config=empty_mcp_config(tmp_path), **values)


def opened(tmp_path: Path, **values: Any) -> Toolset:
    return open_toolset(plugin_settings(tmp_path, **values), tmp_path, tmp_path)


@pytest.fixture()
def tools_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "user-tools"
    directory.mkdir()
    monkeypatch.setenv("AGENT_TOOLS_PATH", f"{tmp_path / 'missing'}:{directory}")
    return directory


def test_a_tool_file_in_a_tools_directory_is_found_and_called(
    tmp_path: Path, tools_dir: Path
) -> None:
    path = write(tools_dir, "greetings.py", GREET)
    write(tools_dir, "_helper.py", "raise RuntimeError('files starting with _ are skipped')")
    with opened(tmp_path) as toolset:
        assert toolset.problems == []
        sources = {e.tool.name: (e.source, e.group) for e in toolset.entries}
        assert sources["greet"] == (str(path), "greetings")
        assert sources["calculator"][1] == "calculator"  # the project's tools/ too
        outcome = invoke_tool(toolset.get("greet"), '{"name": "Ada", "times": 2}')
        assert (outcome.ok, outcome.content) == (True, "Hello, Ada! Hello, Ada!")
        refused = invoke_tool(toolset.get("greet"), '{"name": ""}')
        assert (refused.ok, refused.content) == (False, "Error: a name is needed")


@pytest.mark.slow
def test_cli_lists_shows_and_calls_a_tool_file(tmp_path: Path) -> None:
    path = write(tmp_path / "elsewhere", "greetings.py", GREET)
    common = ["--mcp-config", str(empty_mcp_config(tmp_path)), "--tool", str(path)]
    listed = agent_cli("tools", "list", "--json", *common, home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["greet"] == {
        "name": "greet",
        "source": str(path),
        "description": "Greet someone by name.",
    }
    shown = agent_cli("tools", "show", "greet", *common, home=tmp_path)
    assert json.loads(shown.stdout) == {
        "name": "greet",
        "description": "Greet someone by name.",
        "parameters": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "Who to greet."},
                "times": {"type": "integer", "description": "How many greetings.", "default": 1},
            },
            "required": ["name"],
        },
    }
    called = agent_cli("tools", "call", "greet", '{"name": "Ada"}', *common, home=tmp_path)
    assert (called.returncode, called.stdout) == (0, "Hello, Ada!\n")


def test_a_registered_class_in_a_tool_file_is_loaded(tmp_path: Path, tools_dir: Path) -> None:
    path = write(tools_dir, "shouting.py", REGISTERED.format(name="upper_test_file"))
    with opened(tmp_path) as toolset:
        entry = next(e for e in toolset.entries if e.tool.name == "upper_test_file")
        assert entry.source == str(path)
        assert invoke_tool(entry.tool, '{"text": "quiet"}').content == "QUIET"


# --- an installed package ----------------------------------------------------------------------

PACKAGE_PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "agent-demo-tools"
version = "0.1.0"

[project.entry-points."agent.tools"]
demo = "agent_demo_tools"
reverse = "agent_demo_tools:reverse"
broken = "agent_demo_broken"

[tool.setuptools]
py-modules = ["agent_demo_tools", "agent_demo_broken"]
"""

PACKAGE_MODULE = '''
from agent.plugins import tool


@tool
def reverse(text: str) -> str:
    """Reverse a text."""
    return text[::-1]


@tool(name="word_count")
def count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())
'''


@pytest.fixture(scope="module")
def demo_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny package with `agent.tools` entry points, installed into a private directory."""
    source = tmp_path_factory.mktemp("demo-src")
    write(source, "pyproject.toml", PACKAGE_PYPROJECT)
    write(source, "agent_demo_tools.py", PACKAGE_MODULE)
    write(source, "agent_demo_broken.py", "import no_such_module_for_agent_tests\n")
    target = tmp_path_factory.mktemp("demo-site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    return target


@pytest.mark.slow
def test_an_entry_point_plugin_in_an_installed_package_is_found(
    tmp_path: Path, demo_package: Path
) -> None:
    env = {"PYTHONPATH": str(demo_package), "AGENT_LOAD_PLUGINS": "agent-demo-tools"}
    mcp = str(empty_mcp_config(tmp_path))
    listed = agent_cli("tools", "list", "--json", "--mcp-config", mcp, home=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    demo = [(r["name"], r["source"]) for r in rows if r["source"] == "package:agent-demo-tools"]
    assert demo == [
        ("reverse", "package:agent-demo-tools"),
        ("word_count", "package:agent-demo-tools"),
    ]
    warnings = [line for line in listed.stderr.splitlines() if "agent-demo-tools" in line]
    assert len(warnings) == 2, listed.stderr  # the broken entry point, the repeated `reverse`
    kept_out = {**env, "AGENT_LOAD_PLUGINS": ""}  # installed, but no package's plugins loaded
    alone = agent_cli("tools", "list", "--json", "--mcp-config", mcp, home=tmp_path, env=kept_out)
    assert alone.returncode == 0 and "agent-demo-tools" not in alone.stdout + alone.stderr
    assert "entry point broken = agent_demo_broken" in warnings[0]
    assert "No module named 'no_such_module_for_agent_tests'" in warnings[0]
    assert "pip uninstall agent-demo-tools" in warnings[0]
    assert "'reverse' is already defined by package:agent-demo-tools" in warnings[1]
    called = agent_cli(
        "tools",
        "call",
        "word_count",
        '{"text": "a b c"}',
        "--mcp-config",
        mcp,
        home=tmp_path,
        env=env,
    )
    assert (called.returncode, called.stdout.strip()) == (0, "3")


# --- failures are contained --------------------------------------------------------------------

BROKEN_FILES = {
    "syntax.py": (
        "def oops(:\n",
        "syntax.py: cannot import it (SyntaxError: invalid syntax at line 1)",
    ),
    "imports.py": (
        "import os\nimport no_such_module_xyz\n",
        "imports.py: cannot import it (ModuleNotFoundError: No module named 'no_such_module_xyz' "
        "at line 2); fix the file, or move it out of the tools directory",
    ),
    "later.py": (
        GREET.replace("def crash", "def crash_again").replace("def huge", "def huge_again"),
        "later.py: tool 'greet' is already defined by ",
    ),
    "badschema.py": (
        REGISTERED.format(name="bad_schema_test").replace('"required": ["text"],', ""),
        "badschema.py: tool 'bad_schema_test': Qwen-Agent rejects its schema; ",
    ),
    "badhint.py": (
        "from agent.plugins import tool\n\n@tool\ndef when(moment: object) -> str:\n"
        "    return ''\n",
        "badhint.py: tool 'when': parameter 'moment' has unsupported type object; use str, int",
    ),
}


def test_each_broken_plugin_gives_one_line_and_the_rest_loads(
    tmp_path: Path, tools_dir: Path
) -> None:
    write(tools_dir, "greetings.py", GREET)
    for name, (source, _) in BROKEN_FILES.items():
        write(tools_dir, name, source)
    with opened(tmp_path) as toolset:
        assert len(toolset.problems) == len(BROKEN_FILES)
        for (_, expected), problem in zip(
            sorted(BROKEN_FILES.values(), key=lambda item: item[1]),
            sorted(toolset.problems),
            strict=True,
        ):
            assert "\n" not in problem
            assert expected in problem and problem.startswith(str(tools_dir)), problem
        names = [tool.name for tool in toolset.tools]
        assert {"greet", "crash", "crash_again", "calculator", "code_interpreter"} <= set(names)
        assert names.count("greet") == 1
    with pytest.raises(PluginError, match="--strict-tools"):
        opened(tmp_path, strict_tools=True)


def test_cli_reports_a_broken_plugin_on_one_line_and_strict_makes_it_fatal(
    tmp_path: Path,
) -> None:
    tools_dir = tmp_path / "tools"
    write(tools_dir, "greetings.py", GREET)
    write(tools_dir, "imports.py", BROKEN_FILES["imports.py"][0])
    env = {"AGENT_TOOLS_PATH": str(tools_dir)}
    mcp = ["--mcp-config", str(empty_mcp_config(tmp_path))]
    called = agent_cli("tools", "call", "greet", '{"name": "Ada"}', *mcp, home=tmp_path, env=env)
    assert (called.returncode, called.stdout) == (0, "Hello, Ada!\n")
    assert called.stderr.count("\n") == 1 and "imports.py: cannot import it" in called.stderr
    strict = agent_cli(
        "tools", "call", "greet", "{}", "--strict-tools", *mcp, home=tmp_path, env=env
    )
    assert strict.returncode == 2
    assert strict.stderr.splitlines()[-1].startswith(f"error: {tools_dir / 'imports.py'}: cannot")


def test_a_tool_that_raises_gives_an_error_result_and_debug_adds_the_traceback(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "greetings.py", GREET)
    args = ["crash", '{"text": "now"}', "--tool", str(path), "--mcp-config"]
    args.append(str(empty_mcp_config(tmp_path)))
    plain = agent_cli("tools", "call", *args, home=tmp_path)
    assert (plain.returncode, plain.stdout) == (1, "Error: RuntimeError: boom now\n")
    debug = agent_cli("tools", "call", *args, "--debug", home=tmp_path)
    assert debug.returncode == 1
    assert debug.stdout.startswith("Error: RuntimeError: boom now\nTraceback (most recent")
    assert f'File "{path}", line' in debug.stdout


def test_long_results_are_cut_with_a_marker(tmp_path: Path, tools_dir: Path) -> None:
    write(tools_dir, "greetings.py", GREET)
    with opened(tmp_path, tools=("huge",)) as toolset:
        outcome = invoke_tool(toolset.get("huge"), '{"size": 25000}', limit=20_000)
    assert outcome.ok
    assert outcome.content == "x" * 20_000 + (
        "\n[... 5000 more characters cut: tool results are limited to 20000 characters; "
        "the whole result is kept in the run history]"
    )
    assert outcome.uncut == "x" * 25_000


# --- selection ---------------------------------------------------------------------------------


def test_selection_by_name_and_group_and_none(tmp_path: Path, tools_dir: Path) -> None:
    write(tools_dir, "greetings.py", GREET)
    with opened(tmp_path, tools=("greetings", "calculator")) as toolset:
        assert [t.name for t in toolset.tools] == ["calculator", "greet", "crash", "huge"]
    with opened(tmp_path, tools=("files", "code_interpreter")) as toolset:
        assert [t.name for t in toolset.tools] == ["code_interpreter", "files_search", "files_read"]
    assert opened(tmp_path, tools=()).tools == []
    with pytest.raises(UnknownToolError) as unknown:
        opened(tmp_path, tools=("greet", "nope"))
    message = str(unknown.value)
    assert message.startswith("no tool named 'nope', nor a group of tools")
    assert "tools: code_interpreter, calculator, files_search" in message
    assert "groups: calculator, files, greetings, sqlite_query" in message


@pytest.mark.slow
def test_cli_selection_flags_config_and_mcp_servers(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('tools = ["calculator", "time"]\n')

    def names(*flags: str) -> list[str]:
        done = agent_cli("tools", "list", "--json", *flags, home=tmp_path)
        assert done.returncode == 0, done.stderr
        rows = [json.loads(line) for line in done.stdout.splitlines()]
        return [row["name"] for row in rows if "kind" not in row]  # tools (not prompts)

    assert names() == ["time-get_current_time", "time-convert_time", "calculator"]
    assert names("--tools", "fetch-fetch,code_interpreter") == ["fetch-fetch", "code_interpreter"]
    assert names("--no-tools") == []
    unknown = agent_cli("tools", "list", "--tools", "calculator,nope", home=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.splitlines()[-1].startswith("error: no tool named 'nope'")


# --- agent tools new ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tools_new_writes_a_template_that_works(tmp_path: Path) -> None:
    tools_dir = tmp_path / "my tools"
    env = {"AGENT_TOOLS_PATH": str(tools_dir)}
    created = agent_cli("tools", "new", "echo_twice", home=tmp_path, env=env)
    assert created.returncode == 0, created.stderr
    path = tools_dir / "echo_twice.py"
    assert created.stdout == f"{path}\n"
    assert "@tool" in path.read_text() and "agent tools call echo_twice" in created.stderr
    mcp = ["--mcp-config", str(empty_mcp_config(tmp_path))]
    called = agent_cli(
        "tools", "call", "echo_twice", '{"text": "hi", "times": 2}', *mcp, home=tmp_path, env=env
    )
    assert (called.returncode, called.stdout) == (0, "hi hi\n")
    again = agent_cli("tools", "new", "echo_twice", home=tmp_path, env=env)
    assert again.returncode == 2
    assert again.stderr == f"error: {path} already exists; edit it, or pick another name\n"
    bad = agent_cli("tools", "new", "not-a-name", home=tmp_path, env=env)
    assert bad.returncode == 2 and "must be a Python identifier" in bad.stderr
