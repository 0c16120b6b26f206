"""The command line: parse, call a module, render. Logic lives in the modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import json5

from agent import qwen_agent_compat
from agent.backends.local_model import ENGINES
from agent.config import Settings, load_settings
from agent.errors import AgentError, ConfigError
from agent.paths import runs_dir
from agent.sandbox.detect import SANDBOX_CHOICES

log = logging.getLogger("agent")

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model", help="hub id or local directory (default Qwen/Qwen3-0.6B-GPTQ-Int8)"
    )
    group.add_argument(
        "--model-server",
        metavar="URL",
        help="use an OpenAI-compatible server (vLLM, SGLang) instead of a local model",
    )
    group.add_argument("--api-key", help="API key for --model-server")
    group.add_argument("--device", help="auto (default), cpu or cuda")
    group.add_argument("--threads", type=int, help="CPU threads for the local model")
    group.add_argument(
        "--engine",
        help="local engine: auto (default: native on CPU, transformers on CUDA), native "
        "or transformers",
    )
    group.add_argument(
        "--kv-cache-mb",
        type=int,
        help="memory for reusing prompt prefixes across model calls (default 1024; 0: off)",
    )
    group.add_argument(
        "--thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the model think before answering (default off)",
    )
    group.add_argument(
        "--show-thinking", action="store_true", default=None, help="show the model's thinking"
    )
    group.add_argument("--temperature", type=float)
    group.add_argument("--top-p", type=float)
    group.add_argument("--top-k", type=int)
    group.add_argument("--min-p", type=float)
    group.add_argument("--presence-penalty", type=float, help="0-2 against repetition")
    group.add_argument("--max-new-tokens", type=int)
    group.add_argument("--seed", type=int)
    group.add_argument(
        "--no-constrain",
        dest="constrain",
        action="store_false",
        default=None,
        help="local model: do not constrain tool calls to the tools' schemas (default on)",
    )
    group.add_argument(
        "--require-tool",
        action="store_true",
        default=None,
        help="the first model call must call a tool (constrained from its first token locally)",
    )
    group.add_argument(
        "--max-steps",
        type=int,
        help="rounds of tool calls before the model must answer with tools off (default 8)",
    )
    group.add_argument(
        "--max-repeats",
        type=int,
        help="times one identical tool call may run in a task (default 2)",
    )


def _add_tool_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tools")
    group.add_argument("--mcp-config", type=Path, metavar="PATH", help="MCP servers file")
    group.add_argument(
        "--strict-mcp",
        action="store_true",
        default=None,
        help="fail when an MCP server does not start",
    )
    group.add_argument("--code-timeout", type=float, help="seconds per code interpreter call")
    group.add_argument(
        "--code-network",
        action="store_true",
        default=None,
        help="let the code interpreter reach the network (pip, HTTP)",
    )
    group.add_argument(
        "--unsafe-code",
        action="store_true",
        default=None,
        help="run code without isolation where no sandbox works",
    )
    group.add_argument(
        "--sandbox",
        choices=SANDBOX_CHOICES,
        help="code isolation: auto (bubblewrap, else Landlock + seccomp), bubblewrap, landlock",
    )
    group.add_argument(
        "--code-memory", dest="code_memory_mb", type=int, metavar="MB", help="kernel memory limit"
    )
    group.add_argument(
        "--tool",
        dest="tool_files",
        type=Path,
        action="append",
        metavar="FILE",
        help="also load the tools in this Python file (repeatable)",
    )
    group.add_argument(
        "--strict-tools",
        action="store_true",
        default=None,
        help="fail when a plugin tool does not load",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=None,
        help="verbose logs on stderr; tracebacks in tool error results",
    )


def _add_selection_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tool selection").add_mutually_exclusive_group()
    group.add_argument(
        "--tools",
        type=_names,
        metavar="NAME,NAME",
        help="only these tools: tool names, MCP server names or plugin file names",
    )
    group.add_argument(
        "--no-tools", dest="tools", action="store_const", const=(), help="no tools at all"
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def build_parser() -> argparse.ArgumentParser:
    """The `agent` argument parser."""
    parser = argparse.ArgumentParser(prog="agent", description="A local, tool-calling Qwen3 agent.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run one task and stream what happens")
    run.add_argument("prompt", help="the task")
    run.add_argument("--json", action="store_true", help="print JSON Lines events on stdout")
    _add_model_flags(run)
    _add_tool_flags(run)
    _add_selection_flags(run)

    doctor = commands.add_parser("doctor", help="check the sandbox, model, MCP commands, GPU")
    doctor.add_argument("--json", action="store_true", help="one JSON object per check")
    _add_model_flags(doctor)
    _add_tool_flags(doctor)

    tools = commands.add_parser("tools", help="list, show, call or create tools")
    tool_commands = tools.add_subparsers(dest="tools_command", required=True)
    tools_list = tool_commands.add_parser("list", help="every tool the assistant would get")
    tools_list.add_argument("--json", action="store_true", help="one JSON object per tool")
    _add_tool_flags(tools_list)
    _add_selection_flags(tools_list)
    tools_show = tool_commands.add_parser("show", help="the exact schema the model sees")
    tools_show.add_argument("name", help="a tool, or a group (MCP server, plugin file)")
    _add_tool_flags(tools_show)
    tools_call = tool_commands.add_parser("call", help="call one tool as the model would")
    tools_call.add_argument("name")
    tools_call.add_argument("arguments", nargs="?", default="{}", help="JSON object")
    _add_tool_flags(tools_call)
    tools_new = tool_commands.add_parser("new", help="write a tool template to edit")
    tools_new.add_argument("name", help="the tool's name (a Python identifier)")

    evaluate = commands.add_parser("eval", help="measure the model on a benchmark")
    eval_commands = evaluate.add_subparsers(dest="eval_command", required=True)
    bfcl = eval_commands.add_parser(
        "bfcl", help="BFCL single-turn function calling (simple, multiple, parallel, ...)"
    )
    bfcl.add_argument(
        "--categories",
        type=_names,
        metavar="NAME,NAME",
        help="simple, multiple, parallel, parallel_multiple, irrelevance (default: all five)",
    )
    bfcl.add_argument("--limit", type=int, metavar="N", help="only the first N of each category")
    bfcl.add_argument("--out", type=Path, metavar="FILE", help="write scores and entries as JSON")
    bfcl.add_argument("--json", action="store_true", help="one JSON object per entry, then scores")
    _add_model_flags(bfcl)
    return parser


SETTING_FLAGS = (
    "model",
    "model_server",
    "api_key",
    "device",
    "threads",
    "engine",
    "kv_cache_mb",
    "thinking",
    "show_thinking",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "max_new_tokens",
    "seed",
    "constrain",
    "require_tool",
    "max_steps",
    "max_repeats",
    "mcp_config",
    "strict_mcp",
    "code_timeout",
    "code_network",
    "unsafe_code",
    "sandbox",
    "code_memory_mb",
    "tools",
    "tool_files",
    "strict_tools",
    "debug",
)


def _settings(args: argparse.Namespace, **forced: Any) -> Settings:
    flags = {name: getattr(args, name, None) for name in SETTING_FLAGS}
    if flags["tool_files"]:
        flags["tool_files"] = tuple(flags["tool_files"])
    settings = load_settings({**flags, **forced})
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    checks = [
        (settings.temperature is None or settings.temperature >= 0, "--temperature must be >= 0"),
        (settings.top_p is None or 0 < settings.top_p <= 1, "--top-p must be in (0, 1]"),
        (settings.top_k is None or settings.top_k >= 0, "--top-k must be >= 0 (0 turns it off)"),
        (settings.min_p is None or 0 <= settings.min_p <= 1, "--min-p must be in [0, 1]"),
        (0 <= settings.presence_penalty <= 2, "--presence-penalty must be in [0, 2]"),
        (settings.max_new_tokens > 0, "--max-new-tokens must be > 0"),
        (settings.max_steps >= 1, "--max-steps must be >= 1"),
        (settings.max_repeats >= 1, "--max-repeats must be >= 1"),
        (settings.threads is None or settings.threads > 0, "--threads must be > 0"),
        (
            settings.engine in ENGINES,
            f"engine must be one of {', '.join(ENGINES)}, not {settings.engine!r}",
        ),
        (settings.kv_cache_mb >= 0, "--kv-cache-mb must be >= 0 (0: no reuse)"),
        (settings.code_timeout > 0, "--code-timeout must be > 0"),
        (settings.code_memory_mb >= 0, "--code-memory must be >= 0 (0: no limit)"),
        (
            settings.sandbox in SANDBOX_CHOICES,
            f"sandbox must be one of {', '.join(SANDBOX_CHOICES)}, not {settings.sandbox!r}",
        ),
        (settings.tool_result_limit > 0, "tool_result_limit must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    qwen_agent_compat.set_debug(debug)


def _new_run_dir() -> Path:
    path = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (path / "work").mkdir(parents=True, exist_ok=True)
    (path / "logs").mkdir(exist_ok=True)
    return path


def _open_tools(settings: Settings, run_dir: Path) -> Any:
    from agent.tools.toolset import open_toolset

    toolset = open_toolset(settings, work_dir=run_dir / "work", log_dir=run_dir / "logs")
    for problem in toolset.problems:
        log.warning("warning: %s", problem)
    return toolset


@contextlib.contextmanager
def _open_tools_while(load: Callable[[], Any], settings: Settings) -> Iterator[tuple[Any, Any]]:
    """Start the tools in the background while `load` runs (the model load); close them after."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(_open_tools, settings, _new_run_dir())
        try:
            loaded = load()
        except BaseException:
            if opening.exception() is None:
                opening.result().close()
            raise
        toolset = opening.result()  # raises what went wrong starting the tools
    with toolset:
        yield loaded, toolset


def cmd_run(args: argparse.Namespace) -> int:
    """`agent run PROMPT`."""
    from agent.loop.assistant import build_assistant, build_llm
    from agent.loop.runner import RunInfo, run_events, show_run
    from agent.render import JsonLinesRenderer, TerminalRenderer

    settings = _settings(args)
    _setup_logging(settings.debug)
    renderer = JsonLinesRenderer() if args.json else TerminalRenderer(settings.show_thinking)
    with _open_tools_while(lambda: build_llm(settings), settings) as (llm, toolset):
        assistant = build_assistant(settings, llm, toolset)
        info = RunInfo(
            model=settings.model,
            backend=f"server {settings.model_server}" if settings.model_server else "local",
            thinking=settings.thinking,
            tools=[tool.name for tool in toolset.tools],
            sandbox=_sandbox_line(settings, toolset),
        )
        events = run_events(assistant, [{"role": "user", "content": args.prompt}], info)
        status = show_run(events, renderer.show)
    if status == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK if status == "answered" else EXIT_FAILED


def _sandbox_line(settings: Settings, toolset: Any) -> str:
    """The run header's sandbox part, when the code interpreter is one of the tools."""
    from agent.sandbox.detect import detect

    if "code_interpreter" not in [tool.name for tool in toolset.tools]:
        return ""
    return "sandbox: " + detect(settings.sandbox).summary(settings.code_network)


def cmd_tools_list(args: argparse.Namespace) -> int:
    """`agent tools list`."""
    from rich.console import Console
    from rich.table import Table

    settings = _settings(args)
    _setup_logging(settings.debug)
    with _open_tools(settings, _new_run_dir()) as toolset:
        if args.json:
            for entry in toolset.entries:
                row = {
                    "name": entry.tool.name,
                    "source": entry.source,
                    "description": entry.summary,
                }
                print(json.dumps(row, ensure_ascii=False))
            return EXIT_OK
        table = Table("name", "source", "description", box=None)
        for entry in toolset.entries:
            table.add_row(entry.tool.name, entry.source, entry.summary)
        Console(highlight=False).print(table)
    return EXIT_OK


def cmd_tools_call(args: argparse.Namespace) -> int:
    """`agent tools call NAME 'JSON'`: prints the result; exit 1 on an error result."""
    from agent.tools.invoke import invoke_tool

    try:
        parsed = json5.loads(args.arguments)
    except ValueError as exc:
        raise ConfigError(
            f'arguments must be a JSON object, e.g. \'{{"code": "1+1"}}\' ({exc})'
        ) from None
    if not isinstance(parsed, dict):
        raise ConfigError('arguments must be a JSON object, e.g. \'{"timezone": "UTC"}\'')
    settings = _settings(args, tools=(args.name,))
    _setup_logging(settings.debug)
    with _open_tools(settings, _new_run_dir()) as toolset:
        outcome = invoke_tool(
            toolset.get(args.name),
            args.arguments,
            limit=settings.tool_result_limit,
            debug=settings.debug,
        )
    print(outcome.content.rstrip("\n"))
    return EXIT_OK if outcome.ok else EXIT_FAILED


def cmd_tools_show(args: argparse.Namespace) -> int:
    """`agent tools show NAME`: the function description the model gets, as JSON."""
    settings = _settings(args, tools=(args.name,))
    _setup_logging(settings.debug)
    with _open_tools(settings, _new_run_dir()) as toolset:
        for tool in toolset.tools:
            print(json.dumps(tool.function, ensure_ascii=False, indent=2))
    return EXIT_OK


def cmd_tools_new(args: argparse.Namespace) -> int:
    """`agent tools new NAME`: write a template into the user's tools directory."""
    from agent.tools.plugin_tools import new_tool_file

    path = new_tool_file(args.name)
    print(path)
    print(f'edit it, then: agent tools call {args.name} \'{{"text": "hello"}}\'', file=sys.stderr)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """`agent doctor`: exit 1 when a check failed."""
    from agent.doctor.checks import run_checks

    settings = _settings(args)
    _setup_logging(settings.debug)
    checks = run_checks(settings)
    for check in checks:
        if args.json:
            print(json.dumps(asdict(check), ensure_ascii=False))
        else:
            mark = {True: "ok  ", False: "FAIL", None: "    "}[check.ok]
            print(f"{mark} {check.name}: {check.detail}")
    return EXIT_FAILED if any(check.ok is False for check in checks) else EXIT_OK


def cmd_eval_bfcl(args: argparse.Namespace) -> int:
    """`agent eval bfcl`: prints a score table (or JSON Lines); `--out` writes a JSON report."""
    from agent.eval.bfcl import report, run_entries, summarize
    from agent.eval.bfcl_data import CATEGORIES, load_entries
    from agent.loop.assistant import build_llm

    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1")
    if args.out is not None and not args.out.parent.is_dir():
        raise ConfigError(f"--out: directory {args.out.parent} does not exist")
    try:
        entries = load_entries(args.categories or CATEGORIES, args.limit)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = _settings(args)
    _setup_logging(settings.debug)
    llm = build_llm(settings)
    results = []
    for result in run_entries(llm, entries, settings.require_tool):
        results.append(result)
        if args.json:
            print(json.dumps({"type": "entry", **asdict(result)}, ensure_ascii=False), flush=True)
        else:
            mark = "ok  " if result.ok else "miss"
            print(f"{mark} {result.id} {result.latency_s:.1f}s {result.reason}", file=sys.stderr)
    scores = summarize(results)
    if args.out is not None:
        _write_atomically(args.out, json.dumps(report(scores, results), indent=1) + "\n")
    if args.json:
        for score in scores:
            print(json.dumps({"type": "score", **asdict(score)}), flush=True)
    else:
        _print_scores(scores)
    return EXIT_OK


def _print_scores(scores: list[Any]) -> None:
    """The score table: strict/parsed/valid are shares of the tool calls made."""
    from rich.console import Console
    from rich.table import Table

    table = Table("category", "entries", "accuracy", "strict", "parsed", "valid", box=None)
    table.add_column("calls")
    table.add_column("s/entry")
    for s in scores:
        shares = (s.strict_parse, s.parse, s.valid)
        table.add_row(
            s.category,
            str(s.entries),
            f"{s.accuracy:.1%}",
            *(f"{share:.1%}" if share is not None else "-" for share in shares),
            str(s.calls),
            f"{s.mean_latency_s:.2f}",
        )
    Console(highlight=False).print(table)


def _write_atomically(path: Path, text: str) -> None:
    """Write to a scratch file beside `path`, then rename: never a half-written report."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        scratch.write_text(text, encoding="utf-8")
        scratch.replace(path)
    finally:
        scratch.unlink(missing_ok=True)


COMMANDS = {
    "run": cmd_run,
    "bfcl": cmd_eval_bfcl,
    "doctor": cmd_doctor,
    "list": cmd_tools_list,
    "show": cmd_tools_show,
    "call": cmd_tools_call,
    "new": cmd_tools_new,
}


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds `with` blocks, so child processes are stopped


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agent` console script."""
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    subcommand = getattr(args, "tools_command", None) or getattr(args, "eval_command", None)
    command = COMMANDS[subcommand or args.command]
    try:
        return command(args)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:  # e.g. `agent run --json ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
