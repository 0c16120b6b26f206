"""`agent run PROMPT`: one task, streamed as it happens."""

from __future__ import annotations

from typing import Any

import click

from agent.cli.common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, open_tools_while, setup_logging
from agent.cli.options import (
    json_option,
    model_options,
    selection_options,
    settings_from,
    tool_options,
)
from agent.config import Settings


@click.command("run")
@click.argument("prompt")
@json_option("print JSON Lines events on stdout")
@model_options
@tool_options
@selection_options
def run(prompt: str, as_json: bool, **flags: Any) -> int:
    """Run one task and stream what happens."""
    from agent.loop.assistant import build_assistant, build_llm
    from agent.loop.runner import RunInfo, run_events, show_run
    from agent.render import JsonLinesRenderer, TerminalRenderer

    settings = settings_from(flags)
    setup_logging(settings.debug)
    renderer = JsonLinesRenderer() if as_json else TerminalRenderer(settings.show_thinking)
    with open_tools_while(lambda: build_llm(settings), settings) as (llm, toolset):
        assistant = build_assistant(settings, llm, toolset)
        info = RunInfo(
            model=settings.model,
            backend=f"server {settings.model_server}" if settings.model_server else "local",
            thinking=settings.thinking,
            tools=[tool.name for tool in toolset.tools],
            sandbox=_sandbox_line(settings, toolset),
        )
        events = run_events(assistant, [{"role": "user", "content": prompt}], info)
        status = show_run(events, renderer.show)
    if status == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK if status == "answered" else EXIT_FAILED


def _sandbox_line(settings: Settings, toolset: Any) -> str:
    """The run header's sandbox part, when the code interpreter is one of the tools."""
    from agent.sandbox.detect import detect

    if "code_interpreter" not in [tool.name for tool in toolset.tools]:
        return ""
    sandbox = detect(settings.sandbox)
    return "sandbox: " + sandbox.summary(settings.code_network, settings.code_memory_mb)
