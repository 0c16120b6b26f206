"""MCP beyond tools, with a real server written with the `mcp` SDK: its prompts (`agent run
--prompt-from`, `/prompt`), its resources (`--attach`, `@server:uri`), its sampling requests
(answered by the model after approval) and its forms (elicitation, asked in the terminal).

The model is `tests/stub_openai_server.py` (a TEST DOUBLE of an OpenAI-compatible server with
scripted replies, which records what it was sent); the chats run in a real pseudo-terminal.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.errors import MCPReferenceError, ToolError
from agent.loop.server_requests import RequestAnswerer
from agent.tools.elicitation_form import form_fields
from agent.tools.mcp_context import ResourceContent, mentions, parse_resource_ref, resource_block
from agent.tools.mcp_requests import (
    ElicitationRequest,
    Elicited,
    Questions,
    RequestRefused,
    SamplingRequest,
)
from agent.tools.mcp_tools import MCPConnections, MCPServerSpec
from tests.chatpty import ChatTerminal
from tests.clirun import agent_cli, json_events
from tests.stub_openai_server import StubOpenAIServer

# A server of our own: two prompts (one with an example exchange), three resources (text, a
# long text, binary), a tool that asks the client's model (sampling) and one that asks the
# user (elicitation).
NOTES_SERVER = '''
from pydantic import BaseModel
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("notes")


@server.prompt(description="Review a piece of code")
def review(code: str, language: str = "python") -> str:
    return f"Review this {language} code:\\n{code}"


@server.prompt(description="Recap a topic, after an example exchange")
def recap(topic: str) -> list:
    return [
        {"role": "user", "content": f"Let us talk about {topic}."},
        {"role": "assistant", "content": "Gladly. What should the recap cover?"},
        {"role": "user", "content": f"Recap {topic} in one line."},
    ]


@server.resource("notes://today", name="today", mime_type="text/plain", description="Today")
def today() -> str:
    return "Buy oat milk. Call the plumber."


@server.resource("notes://long", name="long", mime_type="text/plain", description="A long log")
def long_log() -> str:
    return "".join(f"entry {n:05d}\\n" for n in range(3000))


@server.resource("notes://logo", name="logo", mime_type="image/png")
def logo() -> bytes:
    return b"\\x89PNG" + bytes(96)


@server.tool()
async def summarize(text: str, ctx: Context) -> str:
    """Summarize a text with the client's model."""
    message = types.SamplingMessage(
        role="user", content=types.TextContent(type="text", text=f"Summarize: {text}")
    )
    result = await ctx.session.create_message([message], max_tokens=5000, system_prompt="Be brief.")
    return f"summary by {result.model}: {result.content.text}"


class Booking(BaseModel):
    name: str
    guests: int
    vegetarian: bool = False


@server.tool()
async def book_table(ctx: Context) -> str:
    """Book a table; asks the user who is coming."""
    answer = await ctx.elicit("Who is booking the table?", Booking)
    if answer.action == "accept":
        data = answer.data
        return f"booked for {data.name}, {data.guests} guests, vegetarian: {data.vegetarian}"
    return f"not booked: the user chose {answer.action}"


server.run()
'''
MODEL = "Qwen/Qwen3-0.6B-GPTQ-Int8"  # the default model: what the stub is named in replies


def call(name: str, arguments: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def sent(server: StubOpenAIServer, index: int) -> list[dict[str, Any]]:
    """The messages of the stub's `index`th request, without the system prompt."""
    return [m for m in server.requests[index]["messages"] if m["role"] != "system"]


def one_line(stderr: str) -> str:
    assert stderr.count("\n") == 1, stderr
    return stderr.strip()


@pytest.fixture(scope="module")
def notes_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    script = tmp_path_factory.mktemp("notes") / "notes_server.py"
    script.write_text(NOTES_SERVER)
    return script


@pytest.fixture
def notes_config(tmp_path: Path, notes_script: Path) -> Path:
    """An `mcp_config.json` with the notes server only."""
    config = tmp_path / "mcp_config.json"
    server = {"command": sys.executable, "args": [str(notes_script)]}
    config.write_text(json.dumps({"mcpServers": {"notes": server}}))
    return config


def run_args(server: StubOpenAIServer, config: Path) -> list[str]:
    return ["--model-server", server.url, "--mcp-config", str(config), "--tools", "notes"]


# --- in this process: the adapter and the policies --------------------------------------------


def test_prompts_resources_and_requests_through_the_adapter(notes_script: Path) -> None:
    spec = MCPServerSpec(name="notes", command=sys.executable, args=[str(notes_script)])
    notices: list[str] = []
    generated: list[tuple[list[dict[str, str]], int, str | None]] = []

    def sampler(messages: list[dict[str, str]], max_tokens: int, system: str | None) -> str:
        generated.append((messages, max_tokens, system))
        return "A short story."

    def answerer(policy: str, questions: Questions | None) -> RequestAnswerer:
        notify = lambda kind, message: notices.append(message)  # noqa: E731
        return RequestAnswerer(policy, 1024, "test-model", sampler, questions, notify)

    with MCPConnections([spec], strict=True) as connections:
        assert [(p.name, [a.name for a in p.arguments]) for p in connections.list_prompts()] == [
            ("review", ["code", "language"]),
            ("recap", ["topic"]),
        ]
        assert [r.uri for r in connections.list_resources()] == [
            "notes://today",
            "notes://long",
            "notes://logo",
        ]
        messages = connections.get_prompt("notes", "recap", {"topic": "cats"})
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        with pytest.raises(MCPReferenceError, match="needs the argument code"):
            connections.get_prompt("notes", "review", {})
        (logo,) = connections.read_resource("notes", "notes://logo")
        assert (logo.text, logo.size, logo.mime_type) == (None, 100, "image/png")
        summarize = next(t for t in connections.tools if t.name == "notes-summarize")
        with pytest.raises(ToolError, match="no run is going"):  # no session's turn
            summarize.call({"text": "x"})
        with connections.answering(answerer("none", None)):
            assert summarize.call({"text": "x"}) == "summary by test-model: A short story."
        assert generated == [([{"role": "user", "content": "Summarize: x"}], 1024, "Be brief.")]
        # A scheduled job: nobody to ask, so what the policy would ask about is refused.
        with connections.answering(answerer("auto", None)), pytest.raises(ToolError) as refused:
            summarize.call({"text": "x"})
        assert "nobody is there to approve it (a scheduled job)" in str(refused.value)
        book = next(t for t in connections.tools if t.name == "notes-book_table")
        with connections.answering(answerer("none", None)), pytest.raises(ToolError) as refused:
            book.call({})
        assert "a scheduled job has no one to ask" in str(refused.value)
    assert len(generated) == 1 and "cap" in notices[0] and "refused" in notices[1]


def test_the_approval_policy_decides_on_sampling_and_always_is_kept() -> None:
    asked: list[str] = []

    def approve(name: str, arguments: dict[str, Any]) -> str:
        asked.append(name)
        return "a"

    def refuse_form(request: ElicitationRequest) -> Elicited:
        raise RequestRefused("nobody can answer the form")

    questions = Questions(approve=approve, elicit=refuse_form)
    request = SamplingRequest(server="notes", messages=[], max_tokens=50)
    for policy, times in (("all", 1), ("time,notes", 1), ("fetch", 0), ("none", 0)):
        asked.clear()
        answerer = RequestAnswerer(policy, 20, "m", lambda *_: "ok", questions, lambda *_: None)
        for _ in range(2):  # "a" (always): asked once
            assert answerer.sample(request).text == "ok"
        assert asked == ["notes-sampling"] * times, policy
    with pytest.raises(RequestRefused, match="nobody can answer"):
        answerer.elicit(ElicitationRequest("notes", "Who?"))


def test_form_fields_parse_what_the_user_types() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "guests": {"type": "integer", "minimum": 1, "maximum": 8},
            "vegetarian": {"type": "boolean", "default": False},
            "table": {"type": "string", "enum": ["in", "out"], "enumNames": ["Inside", "Terrace"]},
        },
        "required": ["name", "guests"],
    }
    name, guests, vegetarian, table = form_fields(schema)
    assert guests.parse("4") == 4 and vegetarian.parse("") is False and vegetarian.parse("yes")
    assert table.parse("terrace") == "out" and table.hint() == "one of: in (Inside), out (Terrace)"
    for field, text, problem in (
        (name, "", "name is required"),
        (guests, "many", "whole number"),
        (guests, "9", "1 to 8"),
        (table, "roof", "one of"),
    ):
        with pytest.raises(ValueError, match=problem):
            field.parse(text)


def test_references_and_resource_text() -> None:
    assert mentions("see @notes:notes://today, and @notes:notes://today. mail a@b:c, @bob: hi") == [
        ("notes", "notes://today")
    ]
    assert parse_resource_ref("notes:file:///tmp/x") == ("notes", "file:///tmp/x")
    with pytest.raises(MCPReferenceError, match="SERVER:URI"):
        parse_resource_ref("notes")
    text, notice = resource_block(
        "notes", "notes://x", [ResourceContent("notes://x", "text/plain", "abcdef", 6)], 4
    )
    assert text.splitlines() == [
        "[resource notes://x from MCP server notes, text/plain]",
        "abcd",
        "[cut: the first 4 of 6 characters are shown]",
    ]
    assert notice and "cut to its first 4 of 6 characters" in notice


# --- the command line -------------------------------------------------------------------------


@pytest.mark.slow
def test_tools_list_shows_prompts_and_resources(tmp_path: Path, notes_config: Path) -> None:
    args = ["--mcp-config", str(notes_config), "--tools", "notes"]
    shown = agent_cli("tools", "list", *args, home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = [" ".join(line.split()) for line in shown.stdout.splitlines()]
    assert "notes/review code, language? Review a piece of code" in lines
    assert "notes:notes://logo logo image/png" in lines
    listed = agent_cli("tools", "list", "--json", *args, home=tmp_path)
    rows = {row["name"]: row for row in json_events(listed.stdout)}
    assert rows["notes-summarize"] == {
        "name": "notes-summarize",
        "source": "mcp:notes",
        "description": "Summarize a text with the client's model.",
    }
    assert rows["notes/recap"]["kind"] == "prompt"
    assert rows["notes/recap"]["arguments"] == [
        {"name": "topic", "description": "", "required": True}
    ]
    assert rows["notes:notes://today"] == {
        "kind": "resource",
        "name": "notes:notes://today",
        "source": "mcp:notes",
        "description": "Today",
        "uri": "notes://today",
        "title": "today",
        "mime_type": "text/plain",
    }


@pytest.mark.slow
def test_run_sends_the_rendered_prompt_and_the_history_keeps_it(
    tmp_path: Path, notes_config: Path
) -> None:
    with StubOpenAIServer([("", "Cats sleep a lot."), ("", "They do.")]) as server:
        args = run_args(server, notes_config)
        prompt = ["--prompt-from", "notes/recap", "--arg", "topic=cats"]
        done = agent_cli("run", *prompt, *args, home=tmp_path)
        assert (done.returncode, done.stdout) == (0, "Cats sleep a lot.\n"), done.stderr
        runs = json_events(agent_cli("runs", "list", "--json", home=tmp_path).stdout)
        resumed = agent_cli("chat", "--resume", runs[0]["id"], "And dogs?", *args, home=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
    rendered = [
        {"role": "user", "content": "Let us talk about cats."},
        {"role": "assistant", "content": "Gladly. What should the recap cover?"},
        {"role": "user", "content": "Recap cats in one line."},
    ]
    assert sent(server, 0) == rendered
    assert sent(server, 1) == [
        *rendered,
        {"role": "assistant", "content": "Cats sleep a lot."},
        {"role": "user", "content": "And dogs?"},
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--prompt-from", "notes/review"], "prompt notes/review needs the argument code"),
        (["--prompt-from", "notes/nope"], "MCP server 'notes' has no prompt 'nope'"),
        (["--prompt-from", "ghost/review"], "no MCP server 'ghost' in this run"),
        (["--attach", "notes:notes://nope", "Read it."], "resource notes:notes://nope"),
        (["--prompt-from", "review"], "'review' is not a prompt reference"),
    ],
)
def test_a_prompt_or_resource_that_is_not_there_is_one_line(
    tmp_path: Path, notes_config: Path, args: list[str], expected: str
) -> None:
    with StubOpenAIServer([]) as server:
        done = agent_cli("run", *args, *run_args(server, notes_config), home=tmp_path)
    assert done.returncode == 2
    assert one_line(done.stderr).startswith(f"error: {expected}")
    assert server.requests == []  # nothing reached the model


@pytest.mark.slow
def test_attach_adds_resources_and_cuts_a_long_one(tmp_path: Path, notes_config: Path) -> None:
    resources = ["notes:notes://today", "notes:notes://logo", "notes:notes://long"]
    attach = [part for ref in resources for part in ("--attach", ref)]
    with StubOpenAIServer([("", "Noted.")]) as server:
        args = run_args(server, notes_config)
        done = agent_cli("run", "What is on my list?", *attach, "--json", *args, home=tmp_path)
    assert done.returncode == 0, done.stderr
    (message,) = sent(server, 0)
    text = message["content"]
    assert text.startswith(
        "What is on my list?\n\n[resource notes://today from MCP server notes, text/plain]\n"
        "Buy oat milk. Call the plumber.\n\n"
        "[resource notes://logo from MCP server notes, image/png]\n"
        "[binary content of notes://logo: image/png, 100 bytes, not included]\n\n"
        "[resource notes://long from MCP server notes, text/plain]\nentry 00000\n"
    )
    # 12 characters an entry: 1,666 whole ones, and 8 characters of the next
    assert text.endswith(
        "entry 01665\nentry 01\n[cut: the first 20,000 of 36,000 characters are shown]"
    )
    events = json_events(done.stdout)
    assert [e["type"] for e in events[:2]] == ["run_started", "notice"]
    assert events[1]["message"] == (
        "resource notes:notes://long was cut to its first 20,000 of 36,000 characters "
        "(resource_limit)"
    )


@pytest.mark.slow
def test_sampling_is_answered_by_the_model_only_when_allowed(
    tmp_path: Path, notes_config: Path
) -> None:
    replies = [
        ("", call("notes-summarize", {"text": "a long story"})),
        ("", "A short story."),  # the server's sampling request
        ("", "Here it is."),
        ("", call("notes-summarize", {"text": "a long story"})),
        ("", "It was refused."),
    ]
    with StubOpenAIServer(replies) as server:
        args = run_args(server, notes_config)
        allowed = agent_cli(
            "run", "Summarize.", "--approve", "none", "--json", *args, home=tmp_path
        )
        asked = agent_cli("run", "Summarize.", "--json", *args, home=tmp_path)  # no terminal
    assert allowed.returncode == 0, allowed.stderr
    events = json_events(allowed.stdout)
    notice = next(e for e in events if e["type"] == "notice")
    assert notice["message"] == (
        "server notes asked the model for a completion: 1024 tokens (it asked for 5000; "
        "sampling_max_tokens caps it)"
    )
    result = next(e for e in events if e["type"] == "tool_result")
    assert (result["ok"], result["content"]) == (True, f"summary by {MODEL}: A short story.")
    assert sent(server, 1) == [{"role": "user", "content": "Summarize: a long story"}]
    assert server.requests[1]["max_tokens"] == 1024
    assert server.requests[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    refused = next(e for e in json_events(asked.stdout) if e["type"] == "tool_result")
    assert not refused["ok"]
    assert "the sampling request was refused: nobody can approve it" in refused["content"]
    assert len(server.requests) == 5  # the refused request never reached the model


@pytest.mark.slow
def test_a_form_is_refused_when_nobody_can_answer(tmp_path: Path, notes_config: Path) -> None:
    replies = [("", call("notes-book_table", {})), ("", "I could not book.")]
    with StubOpenAIServer(replies) as server:
        done = agent_cli("run", "Book.", "--json", *run_args(server, notes_config), home=tmp_path)
    assert done.returncode == 0, done.stderr
    events = json_events(done.stdout)
    result = next(e for e in events if e["type"] == "tool_result")
    assert not result["ok"]
    assert "nobody can answer the form (standard input is not a terminal)" in result["content"]
    notice = next(e for e in events if e["type"] == "notice")
    assert "server notes asked: 'Who is booking the table?'" in notice["message"]


@pytest.mark.slow
def test_chat_asks_before_sampling_and_fills_in_a_form(
    tmp_path: Path, notes_config: Path, service: dict[str, str]
) -> None:
    """In a terminal: the user allows the sampling request and answers the server's form
    (through the resident service too: the questions and answers cross its socket); a
    prompt and a resource sent from the chat."""
    replies = [
        ("", call("notes-summarize", {"text": "a long story"})),
        ("", "A short story."),  # the server's sampling request
        ("", "Summarized."),
        ("", call("notes-book_table", {})),
        ("", "Booked."),
        ("", "Noted."),
        ("", "Looks fine."),
    ]
    with StubOpenAIServer(replies) as server:
        chat = ChatTerminal(
            *run_args(server, notes_config), "--approve", "notes", home=tmp_path, env=service
        )
        chat.turn("Summarize a long story.", "[a]lways for this tool: ")  # the tool call
        chat.say("y")
        asked = chat.wait_for("[a]lways for this tool: ")
        assert 'allow notes-sampling {"max_tokens": 1024, "system_prompt": "Be brief."' in asked
        chat.say("y")
        shown = chat.wait_for("Summarized.")
        assert "← notes-summarize" in shown and f"summary by {MODEL}: A short story." in shown
        assert "notice: server notes asked the model for a completion: 1024 tokens" in shown
        chat.turn("Book a table.", "[a]lways for this tool: ")
        chat.say("y")
        assert "MCP server notes asks: Who is booking the table?" in chat.wait_for("[c]ancel: ")
        chat.say("a")
        chat.wait_for("Name (string): ")
        chat.say("Ann")
        chat.wait_for("Guests (integer): ")
        chat.say("many")
        assert "type a whole number" in chat.wait_for("Guests (integer): ")
        chat.say("4")
        chat.wait_for("Vegetarian (optional) (yes/no) [no]: ")
        chat.say("y")
        assert "booked for Ann, 4 guests, vegetarian: True" in chat.wait_for("Booked.")
        chat.turn("What about @notes:notes://today?", "Noted.")
        chat.turn("/prompt notes/review", "error: prompt notes/review needs the argument code")
        chat.turn("Read @ghost:x://y", "error: no MCP server 'ghost' in this run")
        chat.turn('/prompt notes/review "code=print(1)"', "Looks fine.")
        assert chat.leave() == 0
    assert sent(server, 5)[-1]["content"] == (
        "What about @notes:notes://today?\n\n"
        "[resource notes://today from MCP server notes, text/plain]\n"
        "Buy oat milk. Call the plumber."
    )
    assert sent(server, 6)[-1] == {"role": "user", "content": "Review this python code:\nprint(1)"}
    assert len(server.requests) == 7  # the refused references sent nothing


@pytest.mark.slow
def test_the_local_engine_answers_a_sampling_request(
    tiny_trained_gptq: Path, notes_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model in this process answers while the tool call that led to the request waits
    (the request is answered in a worker thread, not on the MCP loop), capped in length."""
    from concurrent.futures import ThreadPoolExecutor

    from agent.config import load_settings
    from agent.session import open_local_session

    monkeypatch.setenv("AGENT_HOME", str(tmp_path))
    settings = load_settings(
        {
            "model": str(tiny_trained_gptq),
            "mcp_config": notes_config,
            "tools": ("notes",),
            "approve": "none",
            "sampling_max_tokens": 3,
            "seed": 1,
        }
    )
    with open_local_session(settings) as session:
        tool = session.toolset.get("notes-summarize")
        with session.toolset.answering(session.answerer), ThreadPoolExecutor(1) as worker:
            # As the assistant calls it: from its own thread.
            result = worker.submit(tool.call, {"text": "a long story"}).result(timeout=120)
        usage = session.assistant.llm.usage.as_dict()
    assert result.startswith(f"summary by {tiny_trained_gptq}: ")
    assert usage["llm_calls"] == 1 and 0 < usage["completion_tokens"] <= 3
