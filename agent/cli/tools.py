"""`agent tools list|show|call|new`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import json5

from agent.cli.common import EXIT_FAILED, EXIT_OK, setup_logging
from agent.cli.options import json_option, selection_options, settings_from, tool_options
from agent.errors import ConfigError
from agent.paths import new_run_dir
from agent.render import visible


@click.group("tools")
def tools() -> None:
    """List, show, call or create tools."""


@tools.command("list")
@json_option("one JSON object per tool")
@tool_options
@selection_options
def list_tools(as_json: bool, **flags: Any) -> int:
    """Every tool the assistant would get."""
    from rich.console import Console
    from rich.table import Table

    settings = settings_from(flags)
    setup_logging(settings.debug)
    from agent.tools.toolset import open_tools

    with open_tools(settings, new_run_dir()) as toolset:
        if as_json:
            for entry in toolset.entries:
                row = {  # JSON escapes control characters: the exact text
                    "name": entry.tool.name,
                    "source": entry.source,
                    "description": entry.summary,
                }
                print(json.dumps(row, ensure_ascii=False))
            return EXIT_OK
        table = Table("name", "source", "description", box=None)
        for entry in toolset.entries:
            table.add_row(*map(visible, (entry.tool.name, entry.source, entry.summary)))
        Console(highlight=False).print(table)
    return EXIT_OK


@tools.command("show")
@click.argument("name")
@tool_options
def show(name: str, **flags: Any) -> int:
    """The exact schema the model sees (NAME: a tool, or a group: MCP server, plugin file)."""
    settings = settings_from(flags, tools=(name,))
    setup_logging(settings.debug)
    from agent.tools.toolset import open_tools

    with open_tools(settings, new_run_dir()) as toolset:
        for tool in toolset.tools:
            print(visible(json.dumps(tool.function, ensure_ascii=False, indent=2)))
    return EXIT_OK


@tools.command("call")
@click.argument("name")
@click.argument("arguments", default="{}")
@tool_options
def call(name: str, arguments: str, **flags: Any) -> int:
    """Call one tool as the model would (ARGUMENTS: a JSON object); exit 1 on an error result."""
    from agent.tools.invoke import invoke_tool

    try:
        parsed = json5.loads(arguments)
    except ValueError as exc:
        raise ConfigError(
            f'arguments must be a JSON object, e.g. \'{{"code": "1+1"}}\' ({exc})'
        ) from None
    if not isinstance(parsed, dict):
        raise ConfigError('arguments must be a JSON object, e.g. \'{"timezone": "UTC"}\'')
    settings = settings_from(flags, tools=(name,))
    setup_logging(settings.debug)
    from agent.tools.toolset import open_tools

    with open_tools(settings, new_run_dir()) as toolset:
        outcome = invoke_tool(
            toolset.get(name), arguments, limit=settings.tool_result_limit, debug=settings.debug
        )
    print(visible(outcome.content.rstrip("\n")))
    return EXIT_OK if outcome.ok else EXIT_FAILED


@tools.command("new")
@click.argument("name")
def new(name: str) -> int:
    """Write a tool template to edit (NAME: the tool's name, a Python identifier)."""
    from agent.tools.plugin_tools import new_tool_file

    path = new_tool_file(name)
    print(path)
    print(f'edit it, then: agent tools call {name} \'{{"text": "hello"}}\'', file=sys.stderr)
    return EXIT_OK
