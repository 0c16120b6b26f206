"""The code_interpreter tool against a real Jupyter kernel, called as the model calls it."""

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from qwen_agent.tools.base import TOOL_REGISTRY

from agent.tools.code_interpreter import CodeInterpreter
from agent.tools.invoke import ToolOutcome, invoke_tool

MakeTool = Callable[..., CodeInterpreter]


@pytest.fixture
def make_tool(tmp_path: Path) -> Iterator[MakeTool]:
    tools: list[CodeInterpreter] = []

    def make(**options: float) -> CodeInterpreter:
        tools.append(CodeInterpreter(tmp_path / "run", **options))
        return tools[-1]

    yield make
    for tool in tools:
        tool.close()


def run(tool: CodeInterpreter, code: str) -> ToolOutcome:
    return invoke_tool(tool, json.dumps({"code": code}))


def test_registered_with_qwen_agent_schema() -> None:
    assert TOOL_REGISTRY["code_interpreter"] is CodeInterpreter
    assert CodeInterpreter.parameters == {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "The python code."}},
        "required": ["code"],
    }


def test_missing_code_is_an_error_result(make_tool: MakeTool) -> None:
    outcome = invoke_tool(make_tool(), '{"script": "print(1)"}')
    assert not outcome.ok
    assert '"code" argument' in outcome.content


def test_prints_result(make_tool: MakeTool) -> None:
    outcome = run(make_tool(), "print(2**100)")
    assert outcome.ok
    assert outcome.content.strip() == str(2**100)


def test_literal_newline_inside_json_string_is_accepted(make_tool: MakeTool) -> None:
    outcome = invoke_tool(make_tool(), '{"code": "x = 20\nprint(x + 1)"}')
    assert outcome.ok, outcome.content
    assert outcome.content.strip() == "21"


def test_state_is_kept_across_calls(make_tool: MakeTool) -> None:
    tool = make_tool()
    first = run(tool, "x = 41")
    assert (first.ok, first.content) == (True, "Finished execution.")
    assert run(tool, "print(x + 1)").content.strip() == "42"


def test_endless_loop_times_out_and_next_call_works(make_tool: MakeTool) -> None:
    tool = make_tool(timeout_s=2)
    assert run(tool, "y = 1").ok  # start the kernel outside the timed call
    started = time.monotonic()
    outcome = run(tool, "while True: pass")
    assert time.monotonic() - started < 4
    assert not outcome.ok
    assert "timed out after 2 s" in outcome.content
    assert run(tool, "print(y)").content.strip() == "1"


def test_exception_is_an_error_result_with_its_name(make_tool: MakeTool) -> None:
    outcome = run(make_tool(), "print('before')\n1 / 0")
    assert not outcome.ok
    assert outcome.content.startswith("Error: ZeroDivisionError: division by zero")
    assert "before" in outcome.content
    assert "\x1b[" not in outcome.content


def test_kernel_exit_is_an_error_and_next_call_gets_a_fresh_kernel(make_tool: MakeTool) -> None:
    tool = make_tool()
    assert run(tool, "z = 1").ok
    outcome = run(tool, "import os; os._exit(1)")
    assert not outcome.ok
    assert "kernel died" in outcome.content and "state was lost" in outcome.content
    assert run(tool, "print('z' in globals())").content.strip() == "False"


def test_output_is_capped_with_a_marker(make_tool: MakeTool) -> None:
    outcome = run(make_tool(output_limit=20_000), "print('x' * 10**6)")
    assert outcome.ok
    assert outcome.content.startswith("x" * 20_000)
    assert len(outcome.content) < 20_200
    assert f"{10**6 + 1 - 20_000} more characters dropped" in outcome.content


def test_kernel_runs_in_work_dir(make_tool: MakeTool, tmp_path: Path) -> None:
    assert run(make_tool(), "open('note.txt', 'w').write('hello')").ok
    assert (tmp_path / "run" / "note.txt").read_text() == "hello"


def test_image_is_saved_to_work_dir(make_tool: MakeTool, tmp_path: Path) -> None:
    code = (
        "from IPython.display import Image, display\n"
        "display(Image(data=b'\\x89PNG\\r\\n\\x1a\\nfake', format='png'))"
    )
    outcome = run(make_tool(), code)
    assert outcome.ok, outcome.content
    path = Path(outcome.content.strip().removeprefix("![image](").removesuffix(")"))
    assert path.parent == tmp_path / "run"
    assert path.read_bytes() == b"\x89PNG\r\n\x1a\nfake"


def test_kernel_stderr_goes_to_the_run_log(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "logs").mkdir()
    tool = CodeInterpreter(tmp_path / "run", log_dir=tmp_path / "logs")
    try:
        code = "import sys; print('kernel-own-stderr', file=sys.__stderr__, flush=True)"
        assert run(tool, code).ok
    finally:
        tool.close()
    assert "kernel-own-stderr" in (tmp_path / "logs" / "kernel.log").read_text()
    assert "kernel-own-stderr" not in capfd.readouterr().err


def test_a_kernel_started_from_a_thread_outlives_that_thread(tmp_path: Path) -> None:
    # Each run (each chat turn) calls tools from its own worker thread; the kernel and its
    # state must outlive that thread (the sandbox's parent-death signal follows threads).
    tool = CodeInterpreter(tmp_path / "run")
    try:
        worker = threading.Thread(target=lambda: invoke_tool(tool, '{"code": "x = 41"}'))
        worker.start()
        worker.join()
        outcome = invoke_tool(tool, '{"code": "print(x + 1)"}')
    finally:
        tool.close()
    assert (outcome.ok, outcome.content.strip()) == (True, "42")


def test_a_spare_kernel_goes_to_one_interpreter_and_shares_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resident service's spares: each interpreter gets its own already-started kernel,
    in a work directory of its own, and a fresh spare takes its place; nothing one ran is
    seen by the next."""
    from agent.tools.code_interpreter import KernelSpares

    monkeypatch.setenv("AGENT_HOME", str(tmp_path / "home"))
    spares = KernelSpares()
    first = CodeInterpreter(tmp_path / "first", spares=spares)
    second = CodeInterpreter(tmp_path / "second", spares=spares)
    try:
        assert run(first, "x = 41; open('mine.txt', 'w').write('1')").ok
        alone = run(second, "import os; print('x' in globals(), os.listdir('.'))")
        assert (alone.ok, alone.content.strip()) == (True, "False []")
        assert first.work_dir != second.work_dir
        assert first.work_dir.parent.parent == tmp_path / "home" / "runs"
        assert (first.work_dir / "mine.txt").exists()
        assert run(first, "print(x + 1)").content.strip() == "42"
    finally:
        first.close()
        second.close()
        spares.close()
    assert spares.ready() == 0
