"""Untrusted text reaches a real terminal shown, never executed; --json keeps it exact."""

import os
import pty
import re
import subprocess
from pathlib import Path

import pytest

from agent.render import visible
from tests.clirun import agent_argv, agent_cli, agent_env, empty_mcp_config, json_events
from tests.stub_openai_server import StubOpenAIServer

CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4=\x07"  # OSC 52: put `rm -rf ~` in the clipboard
ATTACK = (
    f"{CLIPBOARD}\x1b[2J\x1b]0;pwned\x07\x1b]8;;http://evil.example\x07link\x1b]8;;\x07\r\x9b31m"
)
ANSWER = f"Done.{ATTACK}"
TOOL = f'''
from agent.plugins import tool


@tool
def evil() -> str:
    """Return a hostile text."""
    return "page: {ATTACK.encode("unicode_escape").decode()}"
'''
CALL = '<tool_call>\n{"name": "evil", "arguments": {}}\n</tool_call>'
STYLING = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colours, the only escapes allowed


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J", "␛[2J"),
        ("bell\x07", "bell␇"),
        ("over\rwrite", "over␍write"),
        ("keep\n\tthis", "keep\n\tthis"),
        ("\x9b31m", "\\x9b31m"),
        ("\u202egnp.exe", "\\u202egnp.exe"),
        ("del\x7f", "del␡"),
        ("plain ✓ text", "plain ✓ text"),
    ],
)
def test_visible_shows_control_characters(text: str, shown: str) -> None:
    assert visible(text) == shown


def _run_in_terminal(argv: list[str], env: dict[str, str]) -> bytes:
    """Run `argv` with stdin, stdout and stderr on a real pseudo-terminal; all it wrote."""
    master, slave = pty.openpty()
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(timeout=120) == 0, output.decode(errors="replace")
    return output


@pytest.mark.slow
def test_hostile_tool_result_and_answer_are_shown_not_executed(tmp_path: Path) -> None:
    tool_file = tmp_path / "evil.py"
    tool_file.write_text(TOOL)
    args = [
        "--tool",
        str(tool_file),
        "--tools",
        "evil",
        "--mcp-config",
        str(empty_mcp_config(tmp_path)),
    ]
    with StubOpenAIServer([("", CALL), ("", ANSWER)]) as server:
        argv = agent_argv("run", "Read the page.", "--model-server", server.url, *args)
        env = agent_env(tmp_path, {"TERM": "xterm-256color", "COLUMNS": "200"})
        screen = _run_in_terminal(argv, env).decode()
    content = STYLING.sub("", screen)
    assert "\x1b" not in content and "\x07" not in content and "\x9b" not in content
    assert "Done.␛]52;c;cm0gLXJmIH4=␇␛[2J" in content  # the answer, shown
    assert "page: ␛]52;c;" in content  # the tool result preview, shown
    assert STYLING.search(screen), "rich's styling should still reach the terminal"

    with StubOpenAIServer([("", CALL), ("", ANSWER)]) as server:
        done = agent_cli(
            "run", "Read the page.", "--json", "--model-server", server.url, *args, home=tmp_path
        )
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    assert [e["text"] for e in events if e["type"] == "answer"] == [ANSWER]
    (result,) = [e for e in events if e["type"] == "tool_result"]
    assert result["content"] == f"page: {ATTACK}"
    assert not {"\x1b", "\x07", "\x9b"} & set(done.stdout)  # escaped by JSON, not neutralized


def test_tools_call_output_is_shown_not_executed(tmp_path: Path) -> None:
    tool_file = tmp_path / "evil.py"
    tool_file.write_text(TOOL)
    done = agent_cli("tools", "call", "evil", "--tool", str(tool_file), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and done.stdout.startswith("page: ␛]52;c;")
