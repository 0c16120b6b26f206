"""`agent tools list|show|call|new`."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click
import json5
from rich.text import Text as RichText

from agent.cli.common import EXIT_FAILED, EXIT_OK, setup_logging
from agent.cli.options import json_option, selection_options, settings_from, tool_options
from agent.errors import ConfigError
from agent.paths import new_run_dir
from agent.render import visible

if TYPE_CHECKING:
    from agent.tools.mcp_tools import PromptInfo, ResourceInfo


@click.group("tools")
def tools() -> None:
    """List, show, call or create tools."""


@tools.command("list")
@json_option("one JSON object per tool, then per MCP prompt and resource (with a kind)")
@tool_options
@selection_options
def list_tools(as_json: bool, **flags: Any) -> int:
    """Every tool the assistant would get, and the MCP servers' prompts and resources."""
    from rich.console import Console
    from rich.table import Table

    settings = settings_from(flags)
    setup_logging(settings.debug)
    from agent.tools.toolset import open_tools

    with open_tools(settings, new_run_dir()) as toolset:
        prompts = toolset.mcp.list_prompts() if toolset.mcp else []
        resources = toolset.mcp.list_resources() if toolset.mcp else []
        if as_json:  # JSON escapes control characters: the exact text
            rows = [
                {"name": entry.tool.name, "source": entry.source, "description": entry.summary}
                for entry in toolset.entries
            ]
            rows += [_prompt_row(prompt) for prompt in prompts]
            rows += [_resource_row(resource) for resource in resources]
            for row in rows:
                print(json.dumps(row, ensure_ascii=False))
            return EXIT_OK
        console = Console(highlight=False, emoji=False)  # `:notes:` is a server, no emoji
        table = Table("name", "source", "description", box=None)
        for entry in toolset.entries:
            table.add_row(*_cells(entry.tool.name, entry.source, entry.summary))
        console.print(table)
        if prompts:
            console.print("\nMCP prompts (agent run --prompt-from NAME --arg KEY=VALUE; /prompt)")
            table = Table("name", "arguments", "description", box=None)
            for prompt in prompts:
                row = _prompt_row(prompt)
                table.add_row(*_cells(row["name"], _arguments(prompt), row["description"]))
            console.print(table)
        if resources:
            console.print("\nMCP resources (agent run --attach NAME; @NAME in chat)")
            table = Table("name", "title", "type", "description", box=None)
            for resource in resources:
                row = _resource_row(resource)
                cells = (row["name"], resource.name, resource.mime_type, row["description"])
                table.add_row(*_cells(*cells))
            console.print(table)
    return EXIT_OK


def _cells(*texts: str) -> list[RichText]:
    """Table cells shown as they are: control characters made visible, no markup."""
    return [RichText(visible(text)) for text in texts]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _prompt_row(prompt: PromptInfo) -> dict[str, Any]:
    """A prompt as `--json` lists it: named as --prompt-from takes it."""
    return {
        "kind": "prompt",
        "name": f"{prompt.server}/{prompt.name}",
        "source": f"mcp:{prompt.server}",
        "description": _first_line(prompt.description),
        "arguments": [
            {"name": a.name, "description": a.description, "required": a.required}
            for a in prompt.arguments
        ],
    }


def _resource_row(resource: ResourceInfo) -> dict[str, Any]:
    """A resource as `--json` lists it: named as --attach takes it."""
    return {
        "kind": "resource",
        "name": f"{resource.server}:{resource.uri}",
        "source": f"mcp:{resource.server}",
        "description": _first_line(resource.description),
        "uri": resource.uri,
        "title": resource.name,
        "mime_type": resource.mime_type,
    }


def _arguments(prompt: PromptInfo) -> str:
    """`code, language?`: the prompt's arguments, `?` after the optional ones."""
    return ", ".join(a.name + ("" if a.required else "?") for a in prompt.arguments)


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
