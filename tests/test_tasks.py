"""Task files: `agent tasks check`, `agent run -t FILE --param k=v`, and jobs of a task file.

The model is the trained tiny checkpoint for one run, and a TEST DOUBLE of an OpenAI-compatible
server (tests/stub_openai_server.py) where a test needs exact answers; everything else is the
product's, the real `agent` command line included (in-process through `agent.cli.main` for the
many one-line errors, in a subprocess for runs).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.history.store import History
from agent.tasks import bind, load_task, render_prompt
from tests.clirun import agent_cli, empty_mcp_config, json_events
from tests.stub_openai_server import StubOpenAIServer

REPORT_SCHEMA = """
[output]
file = "out/report.json"
schema = "report.schema.json"
"""
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temperature": {"type": "number"}},
    "required": ["city", "temperature"],
    "additionalProperties": False,
}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`agent tasks check ARGS` through the real entry point, in this process."""
    code = main(["tasks", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AGENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# --- reading and checking a task file ----------------------------------------------------------

GOOD = (
    """
description = "Weather for a city"
prompt = "Weather in {city} for {days} days, {units}; details: {details}."
time_limit = 120

[parameters.city]
type = "string"

[parameters.days]
type = "integer"
default = 3

[parameters.units]
type = "choice"
choices = ["metric", "imperial"]
default = "metric"

[parameters.details]
type = "boolean"
default = false

[settings]
tools = ["time", "calculator"]
tool_files = ["my_tools.py"]
temperature = 0.2

[mcp_servers.time]
command = "uvx"
args = ["mcp-server-time"]
"""
    + REPORT_SCHEMA
)


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    write(tmp_path / "my_tools.py", "")
    write(tmp_path / "report.schema.json", json.dumps(SCHEMA))
    return write(tmp_path / "weather.toml", GOOD)


def test_a_good_file_is_summarized(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check(capsys, str(good))
    assert code == 0 and err == ""
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    lines = out.splitlines()
    assert lines[0] == f"{good}: ok (sha256 {sha[:12]})"
    assert (
        "  parameters: city (string, required), days (integer, default 3), units (choice: "
        'metric | imperial, default "metric"), details (boolean, default false)'
    ) in lines
    assert f"  tools: time, calculator; plugin files: {good.parent / 'my_tools.py'}" in lines
    assert "  MCP servers (inline): time" in lines
    assert "  settings: temperature = 0.2" in lines and "  time limit: 120 s" in lines
    assert f"  output: {good.parent / 'out/report.json'}, JSON checked against a schema" in lines
    code, out, _ = check(capsys, str(good), "--param", "city=Oslo", "--param", "details=yes")
    assert code == 0
    assert out.splitlines()[-1] == (
        "  prompt as sent: Weather in Oslo for 3 days, metric; details: true."
    )


def test_paths_are_relative_to_the_file(good: Path, tmp_path: Path) -> None:
    task = load_task(good)
    assert task.settings["tool_files"] == (tmp_path / "my_tools.py",)
    assert task.output.file == tmp_path / "out" / "report.json"
    assert task.output.schema == SCHEMA
    assert task.mcp_servers == {"time": {"command": "uvx", "args": ["mcp-server-time"]}}
    local = write(tmp_path / "l.toml", 'prompt = "x"\n[mcp_servers.s]\ncommand = "bin/s"\n')
    assert load_task(local).mcp_servers == {"s": {"command": str(tmp_path / "bin" / "s")}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'prompt = "x"\nlimit = = 1',
            "t.toml: not valid TOML: Invalid value (at line 2, column 9)",
        ),
        ("description = 1", "t.toml: prompt: missing"),
        ('prompt = "x"\nfrob = 1', "t.toml: unknown key(s) frob; a task file has description"),
        ('prompt = "{city}"', "t.toml: prompt: {city} is not a parameter (declared: none)"),
        ('prompt = "{0.__class__}"', "t.toml: prompt: {0.__class__}: a placeholder is a"),
        ('prompt = "{a.b}"\n[parameters.a]', "t.toml: prompt: {a.b}: a placeholder is"),
        ('prompt = "{a[0]}"\n[parameters.a]', "t.toml: prompt: {a[0]}: a placeholder is"),
        ('prompt = "{a!r}"\n[parameters.a]', "t.toml: prompt: {a!r}: a placeholder is"),
        ('prompt = "{a:>9}"\n[parameters.a]', "t.toml: prompt: {a:>9}: a placeholder is"),
        ('prompt = "{"', "t.toml: prompt: Single '{' encountered in format string; write {{"),
        (
            'prompt = "x"\n[parameters.n]\ntype = "int"',
            "t.toml: parameters.n.type: must be one of string, integer, number, boolean, choice",
        ),
        (
            'prompt = "x"\n[parameters.n]\ntype = "integer"\ndefault = "3"',
            "t.toml: parameters.n.default: must be an integer, not '3'",
        ),
        (
            'prompt = "x"\n[parameters.c]\ntype = "choice"\nchoices = ["a"]\ndefault = "b"',
            "t.toml: parameters.c.default: must be one of a, not 'b'",
        ),
        ('prompt = "x"\n[parameters.c]\ntype = "choice"', "t.toml: parameters.c.choices: a choice"),
        ('prompt = "x"\n[parameters.n]\nkind = "x"', "t.toml: parameters.n: unknown key(s) kind"),
        ('prompt = "x"\n[settings]\nfrob = 1', "t.toml: settings: unknown setting(s) frob; known"),
        (
            'prompt = "x"\n[settings]\ntemperature = "hot"',
            "t.toml: settings: 'temperature' must be a float, not 'hot'",
        ),
        ('prompt = "x"\n[settings]\ntop_p = 2.0', "t.toml: settings: top_p must be in (0, 1]"),
        (
            'prompt = "x"\n[settings]\nservice = "maybe"',
            "t.toml: settings: service must be one of auto, off, required, not 'maybe'",
        ),
        ('prompt = "x"\n[settings]\ntool_files = ["no.py"]', "t.toml: settings.tool_files: "),
        (
            'prompt = "x"\n[settings]\nmcp_config = "no.json"',
            "t.toml: settings.mcp_config: MCP config ",
        ),
        (
            'prompt = "x"\n[mcp_servers.s]\nargs = ["a"]',
            't.toml: mcp_servers: server "s" needs "command" (the program to run) or "url"',
        ),
        ('prompt = "x"\ntime_limit = "10m"', "t.toml: time_limit: must be a number of seconds"),
        ('prompt = "x"\n[output]\npath = "a"', "t.toml: output: unknown key(s) path; allowed"),
        (
            'prompt = "x"\n[output]\nschema = {type = "bogus"}',
            "t.toml: output.schema: not a valid JSON schema: 'bogus' is not valid",
        ),
        ('prompt = "x"\n[output]\nschema = "no.json"', "t.toml: output.schema: "),
    ],
)
def test_a_bad_file_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    text: str,
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "t.toml", text)
    code, out, err = check(capsys, "t.toml")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {expected}"), err


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (["days=4"], "weather.toml: parameter 'city' is required: give --param city=VALUE"),
        (["city=Oslo", "cty=Rome"], "weather.toml: no parameter 'cty' (it takes: city, days,"),
        (["city=Oslo", "days=three"], "weather.toml: parameter 'days' must be an integer, not"),
        (
            ["city=Oslo", "units=kelvin"],
            "weather.toml: parameter 'units' must be one of metric, imperial, not",
        ),
        (
            ["city=Oslo", "details=maybe"],
            "weather.toml: parameter 'details' must be true or false, not 'maybe'",
        ),
        (["city"], "--param 'city': write it as KEY=VALUE"),
    ],
)
def test_bad_parameters_are_one_line_and_exit_2(
    good: Path, capsys: pytest.CaptureFixture[str], params: list[str], expected: str
) -> None:
    args = [word for param in params for word in ("--param", param)]
    code, out, err = check(capsys, str(good), *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {expected}"), err


def test_values_are_data_never_templates(tmp_path: Path) -> None:
    task = load_task(
        write(
            tmp_path / "t.toml",
            'prompt = "About {topic} for {who} (literal {{braces}})."\n'
            "[parameters.topic]\n[parameters.who]\n",
        )
    )
    values = bind(task, {"topic": "{who}", "who": "$HOME {0.__class__} ${who} {{x}}"})
    assert render_prompt(task, values) == (
        "About {who} for $HOME {0.__class__} ${who} {{x}} (literal {braces})."
    )


def test_typed_values(good: Path) -> None:
    task = load_task(good)
    given = {"city": "Oslo", "days": "-2", "units": "imperial", "details": "on"}
    assert bind(task, given) == {"city": "Oslo", "days": -2, "units": "imperial", "details": True}
    number = load_task(write(good.parent / "n.toml", 'prompt = "{x}"\n[parameters.x]\n'
                             'type = "number"\ndefault = 2\n'))  # fmt: skip
    assert render_prompt(number, bind(number, {})) == "2"
    assert render_prompt(number, bind(number, {"x": "0.25"})) == "0.25"


# --- agent run -t ---------------------------------------------------------------------------


def run_task(home: Path, *args: str) -> Any:
    env = {"AGENT_MCP_CONFIG": str(empty_mcp_config(home.parent))}
    return agent_cli("run", *args, home=home, env=env, timeout=120)


@pytest.mark.slow
def test_run_a_task_with_json_output_checked_against_its_schema(tmp_path: Path, home: Path) -> None:
    write(tmp_path / "report.schema.json", json.dumps(SCHEMA))
    task = write(
        tmp_path / "report.toml",
        'prompt = "Weather in {city} as JSON. Not {{city}}."\n'
        '[parameters.city]\ntype = "string"\n'
        "[settings]\ntools = []\ntemperature = 0.2\n" + REPORT_SCHEMA,
    )
    home.mkdir()
    write(home / "config.toml", "temperature = 0.5\nmax_steps = 3\n")
    answer = {"city": "Oslo", "temperature": -3.5}
    replies = [
        ("", "```json\n" + json.dumps(answer) + "\n```"),  # a fence, taken off
        ("", '{"city": "Oslo"}'),  # misses a required property
        ("", "Sunny."),  # not JSON at all
    ]
    report = tmp_path / "out" / "report.json"
    with StubOpenAIServer(replies) as server:
        done = run_task(home, "-t", str(task), "--param", "city={x} $HOME", "--model-server",
                        server.url, "--json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(report.read_text()) == answer
        assert done.stderr.splitlines()[-1] == f"wrote {report}"
        events = json_events(done.stdout)
        assert events[0]["prompt"] == "Weather in {x} $HOME as JSON. Not {city}."
        written = report.read_text()
        for flags in (["--temperature", "0.9"], []):
            failed = run_task(home, "-t", str(task), "--param", "city=Oslo", "--model-server",
                              server.url, *flags)  # fmt: skip
            assert failed.returncode == 1
            last = failed.stderr.splitlines()[-1]
            assert last in (
                "error: the answer does not match the task's output schema: 'temperature' is a "
                "required property (at $)",
                "error: the answer is not the JSON the task's output asks for (Expecting value: "
                "line 1 column 1 (char 0))",
            ), failed.stderr
            assert report.read_text() == written  # nothing written
    # defaults < config.toml < environment < task file < flags
    assert [r["temperature"] for r in server.requests] == [0.2, 0.9, 0.2]
    assert server.requests[0]["messages"][-1]["content"] == events[0]["prompt"]
    with History(home / "history.sqlite3") as history:
        first = history.runs(limit=10)[-1]
        recorded = history.run_settings(first.id)["task"]
    sha = hashlib.sha256(task.read_bytes()).hexdigest()
    assert recorded == {"file": str(task), "sha256": sha, "parameters": {"city": "{x} $HOME"}}


SHOUT_SERVER = """
from mcp.server.mcpserver import MCPServer

server = MCPServer("shout")

@server.tool()
def upper(text: str) -> str:
    \"\"\"Shout the text.\"\"\"
    return text.upper()

server.run()
"""


def tool_call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


@pytest.fixture(params=["off", "auto"])
def service(request: pytest.FixtureRequest, home: Path) -> Iterator[dict[str, str]]:
    """In this process, or through the resident service (stopped when the test ends)."""
    env = {"AGENT_SERVICE": request.param}
    yield env
    if request.param != "off":
        agent_cli("service", "stop", home=home, env=env, timeout=60)


@pytest.mark.slow
def test_run_a_task_with_inline_servers_and_approvals(
    tmp_path: Path, home: Path, service: dict[str, str]
) -> None:
    """The task's own MCP server runs its tool; the tool its `approve` names is asked about
    (and refused: no terminal), through the resident service too."""
    write(tmp_path / "shout.py", SHOUT_SERVER)
    task = write(
        tmp_path / "ask.toml",
        'prompt = "Shout, then add."\n'
        '[settings]\ntools = ["shout", "calculator"]\napprove = "calculator"\n'
        f'[mcp_servers.shout]\ncommand = "{sys.executable}"\nargs = ["{tmp_path / "shout.py"}"]\n'
        '[output]\nfile = "answer.md"\n',
    )
    replies = [
        ("", tool_call("shout-upper", {"text": "quiet {please}"})),
        ("", tool_call("calculator", {"expression": "2 + 2"})),
        ("", "Not allowed."),
    ]
    with StubOpenAIServer(replies) as server:
        done = agent_cli("run", "-t", str(task), "--model-server", server.url, "--json",
                         home=home, env=service, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = [e for e in json_events(done.stdout) if e["type"] == "tool_result"]
    assert [(r["name"], r["ok"]) for r in results] == [("shout-upper", True), ("calculator", False)]
    assert results[0]["content"] == "QUIET {PLEASE}"
    assert 'refused (no terminal to ask): calculator {"expression": "2 + 2"}' in done.stderr
    assert (tmp_path / "answer.md").read_text() == "Not allowed.\n"


@pytest.mark.slow
def test_run_a_task_stops_at_its_time_limit(tmp_path: Path, home: Path) -> None:
    slow = write(tmp_path / "slow.toml", 'prompt = "Count."\ntime_limit = 1\n[output]\nfile = "n"')
    with StubOpenAIServer([("", "1 " * 400)], delay_s=0.02) as server:
        stopped = run_task(home, "-t", str(slow), "--model-server", server.url, "--no-tools")
    assert stopped.returncode == 1 and "stopped at the time limit of 1 s" in stopped.stderr
    assert not (tmp_path / "n").exists()


def test_run_refuses_a_prompt_beside_a_task_file_and_params_without_one(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "hello", "-t", str(good)]) == 2
    assert "error: give a PROMPT or a task file (-t FILE), not both" in capsys.readouterr().err
    assert main(["run", "hello", "--param", "a=b"]) == 2
    assert "error: --param goes with a task file (-t FILE)" in capsys.readouterr().err
    assert main(["run", "-t", str(good), "--param", "days=2"]) == 2
    assert capsys.readouterr().err == (
        "error: weather.toml: parameter 'city' is required: give --param city=VALUE\n"
    )


@pytest.mark.slow
def test_tiny_model_runs_a_task_file(tiny_trained_gptq: Path, tmp_path: Path, home: Path) -> None:
    """The trained tiny model answers the task's prompt with the real time server's result,
    and the answer goes to the task's output file."""
    task = write(
        tmp_path / "time.toml",
        'prompt = "What time is it in {city}?"\n[parameters.city]\n'
        '[settings]\nseed = 1\n[output]\nfile = "time.txt"\n',
    )
    done = agent_cli("run", "-t", str(task), "--param", "city=Tokyo", "--json", "--model",
                     str(tiny_trained_gptq), home=home)  # fmt: skip
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    assert events[0]["prompt"] == "What time is it in Tokyo?"
    call = next(e for e in events if e["type"] == "tool_call")
    result = next(e for e in events if e["type"] == "tool_result")
    assert call["name"] == "time-get_current_time"
    assert call["arguments"] == {"timezone": "Asia/Tokyo"}
    stamp = json.loads(result["content"])["datetime"]
    answer = f"The time in Tokyo is {stamp}."
    assert events[-2] == {**events[-2], "type": "answer", "text": answer}
    assert (tmp_path / "time.txt").read_text() == answer + "\n"


# --- a job of a task file ---------------------------------------------------------------------


def schedule(home: Path, *args: str) -> Any:
    env = {"AGENT_MCP_CONFIG": str(empty_mcp_config(home.parent))}
    return agent_cli("schedule", *args, home=home, env=env, timeout=120)


@pytest.mark.slow
def test_a_job_reads_its_task_file_at_each_run(tmp_path: Path, home: Path) -> None:
    task = tmp_path / "digest.toml"
    first = (
        'prompt = "Digest of {topic}."\n[parameters.topic]\n[settings]\ntools = []\n'
        '[output]\nfile = "digest.md"\n'
    )
    write(task, first)
    replies = [("", "First digest."), ("", "Second digest.")]
    with StubOpenAIServer(replies) as server:
        added = schedule(home, "add", "digest", "--task", str(task), "--param", "topic=news",
                         "--every", "1h", "--model-server", server.url, "--no-check")  # fmt: skip
        assert added.returncode == 0, added.stderr
        shown = schedule(home, "show", "digest").stdout
        assert f"task-file: {task}" in shown and "params: topic=news" in shown
        assert schedule(home, "run-now", "digest").returncode == 0
        assert (tmp_path / "digest.md").read_text() == "First digest.\n"
        write(task, first.replace("Digest of", "Short digest of"))
        again = schedule(home, "run-now", "digest")
        assert again.returncode == 0, again.stdout + again.stderr
        assert (tmp_path / "digest.md").read_text() == "Second digest.\n"
        write(task, "prompt = 'Digest of {topic}.'\n")  # topic is no longer declared
        broken = schedule(home, "run-now", "digest")
    assert broken.returncode == 1
    assert broken.stdout.startswith(
        f"digest: failed: error: {task}: prompt: {{topic}} is not a parameter (declared: none)"
    )
    sent = [request["messages"][-1]["content"] for request in server.requests]
    assert sent == ["Digest of news.", "Short digest of news."]
    history = schedule(home, "history", "digest", "--json")
    hashes = [json.loads(line)["task_sha256"] for line in history.stdout.splitlines()]
    expected = [
        hashlib.sha256(text.encode()).hexdigest()
        for text in (
            "prompt = 'Digest of {topic}.'\n",
            first.replace("Digest of", "Short digest of"),
            first,
        )
    ]
    assert hashes == expected  # newest first, each run with the content it ran
    lines = schedule(home, "history", "digest").stdout.splitlines()
    assert lines[1].endswith(f"task sha256 {expected[1][:12]}")


def test_schedule_add_checks_the_task_file_first(
    good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["schedule", "add", "w", "--every", "1h", "--no-check", "--task", str(good)]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "error: weather.toml: parameter 'city' is required: give --param city=VALUE\n"
    )
    assert main([*args, "text too"]) == 2
    assert "error: give the task text or a task file (--task FILE), not both" in (
        capsys.readouterr().err
    )
    assert main([*args, "--param", "city=Oslo"]) == 0
    assert "added job w: every 1h" in capsys.readouterr().out
