"""`agent service start | stop | status | logs`: the resident service, seen and steered."""

from __future__ import annotations

import json
import sys
from collections import deque

import click

from agent.cli.common import EXIT_FAILED, EXIT_OK
from agent.errors import ServiceError
from agent.render import visible


@click.group("service")
def service() -> None:
    """The resident service that keeps the model and tools warm (it starts by itself)."""


@service.command("start")
def start() -> int:
    """Start the service now (the next command would start it anyway)."""
    from agent.service.client import ServiceUnavailable, connect

    try:
        channel, hello = connect(start=True)
    except ServiceUnavailable as exc:
        raise ServiceError(str(exc)) from None
    channel.close()
    print(f"agent service running, pid {hello.get('pid')}", file=sys.stderr)
    return EXIT_OK


@service.command("stop")
def stop() -> int:
    """Stop the service (a run going on in it is cancelled)."""
    from agent.service.client import ServiceUnavailable, request, service_running, wait_stopped

    try:
        request({"op": "stop", "when": "now"})
    except ServiceUnavailable:
        if not service_running():
            print("the agent service is not running", file=sys.stderr)
            return EXIT_OK
        raise ServiceError("the agent service runs but does not answer") from None
    if not wait_stopped():
        raise ServiceError("the agent service did not stop in time")
    print("agent service stopped", file=sys.stderr)
    return EXIT_OK


@service.command("status")
@click.option("--json", "as_json", is_flag=True, help="print the status as one JSON object")
def status(as_json: bool) -> int:
    """Whether it runs, and what it holds: models, MCP servers, runs, time until idle exit."""
    from agent.service.client import ServiceUnavailable, describe, request

    try:
        reply = request({"op": "status"})
    except ServiceUnavailable:
        if as_json:
            print(json.dumps({"running": False}))
        else:
            print("the agent service is not running (it starts with the next run)")
        return EXIT_FAILED
    reply.pop("op", None)
    if as_json:
        print(json.dumps({"running": True, **reply}, ensure_ascii=False))
    else:
        print(visible(describe(reply)))
    return EXIT_OK


@service.command("logs")
@click.option("-n", "--lines", default=50, show_default=True, help="how many of the last lines")
def logs(lines: int) -> int:
    """The end of the service's log."""
    from agent.service.protocol import log_path

    path = log_path()
    if not path.is_file():
        print(f"no service log yet ({path})", file=sys.stderr)
        return EXIT_OK
    with open(path, encoding="utf-8", errors="replace") as handle:
        tail = deque(handle, maxlen=max(lines, 0))
    sys.stdout.write(visible("".join(tail)))
    return EXIT_OK
