"""`agent doctor`: what works here (sandbox, model, MCP commands, GPU)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from agent.cli.common import EXIT_FAILED, EXIT_OK, setup_logging
from agent.cli.options import json_option, model_options, settings_from, tool_options


@click.command("doctor")
@json_option("one JSON object per check")
@model_options
@tool_options
def doctor(as_json: bool, **flags: Any) -> int:
    """Check the sandbox, model, MCP commands, GPU; exit 1 when a check failed."""
    from agent.doctor.checks import run_checks

    settings = settings_from(flags)
    setup_logging(settings.debug)
    checks = run_checks(settings)
    for check in checks:
        if as_json:
            print(json.dumps(asdict(check), ensure_ascii=False))
        else:
            mark = {True: "ok  ", False: "FAIL", None: "    "}[check.ok]
            print(f"{mark} {check.name}: {check.detail}")
    return EXIT_FAILED if any(check.ok is False for check in checks) else EXIT_OK
