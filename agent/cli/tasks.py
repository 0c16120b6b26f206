"""`agent tasks check FILE`: a task file checked without running it (no model is loaded, no
tool started): one line saying where and what when it is wrong, else what it holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from agent.cli.common import EXIT_OK
from agent.render import visible
from agent.tasks import Parameter, Task, bind, load_task, parse_params, render_prompt

SHOWN_CHARS = 100


@click.group("tasks")
def tasks() -> None:
    """Task files: a prompt template with typed parameters, tools, settings and output, in
    TOML, run by `agent run -t FILE` and `agent schedule add NAME --task FILE`."""


@tasks.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="check these parameters too, as a run would take them (repeatable)",
)
def check(file: Path, params: tuple[str, ...]) -> int:
    """Check task FILE (and with --param, the parameters a run would get) without running it."""
    task = load_task(file)
    values = bind(task, parse_params(params)) if params else None
    for line in summary(task):
        click.echo(visible(line))
    if values is not None:
        click.echo(visible(f"  prompt as sent: {_short(render_prompt(task, values))}"))
    return EXIT_OK


def summary(task: Task) -> list[str]:
    """What a task file holds, in a few lines."""
    lines = [f"{task.path}: ok (sha256 {task.sha256[:12]})"]
    if task.description:
        lines.append(f"  description: {_short(task.description)}")
    lines.append(f"  prompt: {_short(task.prompt)}")
    lines.append(f"  parameters: {', '.join(map(_parameter, task.parameters)) or 'none'}")
    lines.append(f"  tools: {_tools(task)}")
    if task.mcp_servers is not None:
        lines.append(f"  MCP servers (inline): {', '.join(task.mcp_servers) or 'none'}")
    elif "mcp_config" in task.settings:
        lines.append(f"  MCP servers: {task.settings['mcp_config']}")
    others = [k for k in task.settings if k not in ("tools", "tool_files", "mcp_config")]
    if others:
        shown = ", ".join(f"{k} = {_value(task.settings[k])}" for k in others)
        lines.append(f"  settings: {shown}")
    if task.time_limit_s is not None:
        lines.append(f"  time limit: {task.time_limit_s:g} s")
    lines.append(f"  output: {_output(task)}")
    return lines


def _parameter(parameter: Parameter) -> str:
    kind = parameter.type
    if parameter.choices:
        kind += f": {' | '.join(parameter.choices)}"
    state = "required" if parameter.required else f"default {json.dumps(parameter.default)}"
    return f"{parameter.name} ({kind}, {state})"


def _tools(task: Task) -> str:
    chosen = task.settings.get("tools")
    names = "as the settings say" if chosen is None else ", ".join(chosen) or "none"
    files = task.settings.get("tool_files", ())
    return names + (f"; plugin files: {', '.join(map(str, files))}" if files else "")


def _output(task: Task) -> str:
    where = str(task.output.file) if task.output.file else "the answer is printed only"
    return where + (", JSON checked against a schema" if task.output.schema is not None else "")


def _value(value: Any) -> str:
    """A setting's value as the file would write it."""
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(map(_value, value)) + "]"
    return json.dumps(value)


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SHOWN_CHARS else flat[: SHOWN_CHARS - 1] + "…"
