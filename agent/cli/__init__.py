"""The command line: one module per command group; each command parses, calls a module, renders.

`main` runs the `agent` group and turns every way a command can end into an exit code:
0 done, 1 failed, 2 a mistake in the command or configuration (one line on stderr), 130
cancelled.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import click

from agent import __version__
from agent.cli.chat import chat
from agent.cli.common import EXIT_CANCELLED, EXIT_FAILED
from agent.cli.doctor import doctor
from agent.cli.eval import evaluate
from agent.cli.run import run
from agent.cli.runs import runs
from agent.cli.schedule import schedule
from agent.cli.scheduler import scheduler
from agent.cli.serve import serve
from agent.cli.service import service
from agent.cli.tasks import tasks
from agent.cli.tools import tools
from agent.cli.ui import ui
from agent.errors import AgentError
from agent.render import visible

EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", message="%(prog)s %(version)s")
def cli() -> None:
    """A local, tool-calling Qwen3 agent."""


for command in (
    run,
    chat,
    runs,
    schedule,
    scheduler,
    serve,
    service,
    doctor,
    tools,
    tasks,
    ui,
    evaluate,
):
    cli.add_command(command)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds `with` blocks, so child processes are stopped


def _program_name(argv: Sequence[str] | None) -> str:
    """`agent`, or `qagent` when called by that name (both commands are installed)."""
    called = os.path.basename(sys.argv[0]) if argv is None else ""
    return called if called in ("agent", "qagent") else "agent"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agent` console script."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        code = cli.main(args=argv, prog_name=_program_name(argv), standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        return EXIT_USAGE
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "agent"
        message = exc.format_message().rstrip(".")
        print(f"error: {message} (see '{where} --help')", file=sys.stderr)
        return EXIT_USAGE
    except AgentError as exc:
        print(f"error: {visible(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:  # e.g. `agent run --json ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code if isinstance(code, int) else 0
