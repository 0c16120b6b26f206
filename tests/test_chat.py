"""`agent chat` through a real pseudo-terminal: turns, Ctrl-C, Ctrl-D, commands, approval."""

import json
from pathlib import Path

import pexpect
import psutil
import pytest

from tests.chatpty import ChatTerminal
from tests.clirun import agent_cli, empty_mcp_config
from tests.stub_openai_server import StubOpenAIServer


def call(name: str, arguments: dict) -> str:
    payload = json.dumps({"name": name, "arguments": arguments})
    return f"<tool_call>\n{payload}\n</tool_call>"


def kernels() -> set[int]:
    """The code interpreter's kernels running now, but a resident service's (its spare
    kernels: another test's, running beside this one)."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        if any("kernel_boot.py" in part for part in process.info["cmdline"] or []):
            found.add(process.pid)
    return found - _service_kernels()


def _service_kernels() -> set[int]:
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        if (process.info["cmdline"] or [])[-2:] == ["-m", "agent.service"]:
            try:
                found.update(child.pid for child in process.children(recursive=True))
            except psutil.Error:
                continue
    return found


@pytest.mark.slow
def test_turns_ctrl_c_and_ctrl_d_against_a_model_server(tmp_path: Path) -> None:
    # The server is a TEST DOUBLE of vLLM: scripted, slow replies a user can stop.
    long_answer = "Counting: " + " ".join(str(n) for n in range(400))
    replies = [
        ("I should set x.", call("code_interpreter", {"code": "x = 41"})),
        ("", "x is set."),
        ("", long_answer),
        ("", call("code_interpreter", {"code": "print(x + 1)"})),
        ("", "x + 1 is 42."),
    ]
    before = kernels()
    with StubOpenAIServer(replies, delay_s=0.02) as server:
        args = ["--model-server", server.url, "--mcp-config", str(empty_mcp_config(tmp_path))]
        chat = ChatTerminal(
            *args, "--thinking", "--show-thinking", "--approve", "none", home=tmp_path
        )
        turn = chat.turn("Set x to 41.", "x is set.")
        assert "thinking: I should set x." in turn and "→ code_interpreter" in turn
        chat.turn("Count to 400.", "Counting: 0 1 2")
        chat.press("c")  # stops this answer only
        chat.wait_for("notice: answer stopped by the user")
        assert "← code_interpreter" in chat.turn("What is x + 1?", "x + 1 is 42.")
        assert chat.leave() == 0
    assert "42" in chat.screen  # the kernel kept x across the stopped turn
    sent = [request["messages"] for request in server.requests]
    assert len(sent) == 5
    # Later turns (requests 2 on; 1 is the same turn's step after its tool call) get no thinking.
    assert not any("I should set x" in json.dumps(messages) for messages in sent[2:])
    stopped = [m for m in sent[3] if m["role"] == "assistant" and "Counting" in m["content"]]
    assert stopped and stopped[0]["content"].endswith("[stopped by the user]")
    assert "Counting: 0 1 2" in stopped[0]["content"] and len(stopped[0]["content"]) < len(
        long_answer
    )
    assert kernels() <= before  # Ctrl-D left no kernel behind


@pytest.mark.slow
def test_commands_and_approval(tmp_path: Path, service: dict[str, str]) -> None:
    """Our commands, and a tool call asked about and refused (through the resident service
    too: the question and the answer cross its socket)."""
    replies = [("", call("code_interpreter", {"code": "print('ran')"})), ("", "Refused, fine.")]
    with StubOpenAIServer(replies) as server:
        args = ["--model-server", server.url, "--mcp-config", str(empty_mcp_config(tmp_path))]
        chat = ChatTerminal(*args, home=tmp_path, env=service)  # the default: ask before code
        assert "/reset" in chat.turn("/help", "Ctrl-D leaves")
        assert "code_interpreter" in chat.turn("/tools", "calculator")
        chat.turn("/nope", "unknown command /nope")
        asked = chat.turn("Run some code.", "[a]lways for this tool: ")
        assert 'allow code_interpreter {"code": "print(\'ran\')"}?' in asked
        chat.say("n")
        assert "the user did not allow this call" in chat.wait_for("Refused, fine.")
        chat.turn(f"/save {tmp_path / 'chat.md'}", "saved to")
        chat.ready()
        chat.say("/exit")
        chat.child.expect(pexpect.EOF)
        chat.child.close()
        assert chat.child.exitstatus == 0
    saved = (tmp_path / "chat.md").read_text()
    assert "**You:** Run some code." in saved and "did not allow" in saved
    assert "← code_interpreter" not in chat.screen  # the refused call never ran
    assert chat.screen.index("→ code_interpreter") < chat.screen.index("allow code_interpreter")


@pytest.mark.slow
def test_chat_is_kept_in_the_history_and_resumes(tmp_path: Path) -> None:
    replies = [("", "First answer."), ("", "Second answer.")]
    with StubOpenAIServer(replies) as server:
        args = ["--model-server", server.url, "--mcp-config", str(empty_mcp_config(tmp_path))]
        chat = ChatTerminal(*args, home=tmp_path)
        chat.turn("Remember the word walrus.", "First answer.")
        assert chat.leave() == 0
        resumed = ChatTerminal(*args, "--continue", home=tmp_path)
        shown = resumed.wait_for("First answer.")  # the transcript so far, first
        assert "› Remember the word walrus." in shown
        resumed.turn("Which word?", "Second answer.")
        assert resumed.leave() == 0
    second = server.requests[1]["messages"]
    assert [m["content"] for m in second if m["role"] != "system"] == [
        "Remember the word walrus.",
        "First answer.",
        "Which word?",
    ]
    listed = agent_cli("runs", "list", "--json", home=tmp_path)
    runs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(runs) == 2 and len({run["conversation_id"] for run in runs}) == 1


@pytest.mark.slow
def test_a_chat_with_the_trained_tiny_model(tiny_trained_gptq: Path, tmp_path: Path) -> None:
    chat = ChatTerminal("--model", str(tiny_trained_gptq), "--seed", "1", home=tmp_path)
    turn = chat.turn("What time is it in Tokyo?", "+09:00.")
    assert "→ time-get_current_time" in turn and "The time in Tokyo is" in turn
    chat.turn("Hello", "answered")
    assert chat.leave() == 0
