"""MCP servers as Qwen-Agent tools, with real servers: `uvx mcp-server-time`,
`uvx mcp-server-fetch`, and a small SDK server of our own over stdio, streamable HTTP and SSE."""

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import mcp_types as types
import psutil
import pytest
from qwen_agent.tools.base import BaseTool, is_tool_schema

from agent.errors import MCPConfigError, MCPServerError, ToolError
from agent.paths import packaged_mcp_config
from agent.tools.invoke import invoke_tool
from agent.tools.mcp_tools import (
    MCPConnections,
    MCPServerSpec,
    load_mcp_config,
    normalize_parameters,
    open_mcp_tools,
    result_text,
    server_environment,
)

REPO_CONFIG = packaged_mcp_config()  # the default servers, as the installed package has them

# A server of our own: a tool whose schema has $defs/$ref, and a slow tool.
LOCAL_SERVER = '''
import sys, time
from pydantic import BaseModel
from mcp.server.mcpserver import MCPServer

class Point(BaseModel):
    x: int
    y: int

server = MCPServer("local-test")

@server.tool()
def describe(point: Point, label: str = "p") -> str:
    """Describe a point."""
    return f"{label}=({point.x}, {point.y})"

@server.tool()
def nap(seconds: float) -> str:
    """Sleep, then answer."""
    time.sleep(seconds)
    return "awake"

if len(sys.argv) > 1:  # transport, port
    server.run(sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]))
else:
    server.run()
'''


def _stdio(name: str, command: str, *args: str) -> MCPServerSpec:
    return MCPServerSpec(name=name, command=command, args=list(args), type="stdio")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the test HTTP MCP server did not listen on port {port}")


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    script = tmp_path_factory.mktemp("mcp") / "local_server.py"
    script.write_text(LOCAL_SERVER)
    return script


@contextmanager
def _http_server(script: Path, transport: str, path: str) -> Iterator[str]:
    """Our server over HTTP on 127.0.0.1; yields its URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, str(script), transport, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}{path}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def http_urls(local_server: Path) -> Iterator[tuple[str, str]]:
    """URLs of our server over streamable HTTP and over SSE."""
    with (
        _http_server(local_server, "streamable-http", "/mcp") as http_url,
        _http_server(local_server, "sse", "/sse") as sse_url,
    ):
        yield http_url, sse_url


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp-logs")


@pytest.fixture(scope="module")
def servers(
    local_server: Path, http_urls: tuple[str, str], log_dir: Path
) -> Iterator[MCPConnections]:
    """Every kind of server at once, started in parallel, two of them broken."""
    specs = [
        _stdio("time", "uvx", "mcp-server-time"),
        _stdio("fetch", "uvx", "mcp-server-fetch", "--ignore-robots-txt", "--allow-private-ips"),
        _stdio("local", sys.executable, str(local_server)),
        MCPServerSpec(name="web", url=http_urls[0], type="streamable-http"),
        MCPServerSpec(name="sse", url=http_urls[1], type="sse"),
        _stdio("missing", "definitely-not-a-command-4711"),
        _stdio("crashy", sys.executable, "-c", "import sys; sys.exit('crashy-stderr-marker')"),
    ]
    # Generous: mcp-server-fetch may download packages on its first start.
    with MCPConnections(specs, start_timeout=180, call_timeout=120, log_dir=log_dir) as conns:
        yield conns


def _tool(conns: MCPConnections, name: str) -> BaseTool:
    return next(tool for tool in conns.tools if tool.name == name)


@pytest.fixture(scope="module")
def web_page() -> Iterator[tuple[str, str]]:
    """A page on 127.0.0.1 holding a unique secret: (url, secret)."""
    secret = f"secret-{uuid.uuid4().hex}"
    body = (
        "<html><head><title>Test page</title></head><body><article><h1>Test page</h1>"
        f"<p>This page exists for a test. The secret word is {secret}.</p>"
        "<p>It has a second paragraph so that readability keeps the article.</p>"
        "</article></body></html>"
    ).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/page.html", secret
    httpd.shutdown()
    httpd.server_close()


# --- real servers ----------------------------------------------------------------------------


def test_servers_start_and_tools_are_named_server_dash_tool(servers: MCPConnections) -> None:
    names = {tool.name for tool in servers.tools}
    expected = {
        "time-get_current_time",
        "fetch-fetch",
        "local-describe",
        "web-describe",
        "sse-describe",
    }
    assert expected <= names
    for tool in servers.tools:
        assert is_tool_schema(tool.function), tool.name


def test_time_server_gives_the_current_time(servers: MCPConnections) -> None:
    answer = _tool(servers, "time-get_current_time").call({"timezone": "UTC"})
    moment = datetime.fromisoformat(json.loads(answer)["datetime"])
    assert abs(moment - datetime.now(timezone.utc)) < timedelta(minutes=3)


def test_fetch_server_fetches_a_local_page(
    servers: MCPConnections, web_page: tuple[str, str]
) -> None:
    url, secret = web_page
    outcome = invoke_tool(_tool(servers, "fetch-fetch"), json.dumps({"url": url}))
    assert outcome.ok, outcome.content
    assert secret in outcome.content


def test_tool_error_result_becomes_tool_error(servers: MCPConnections) -> None:
    tool = _tool(servers, "time-get_current_time")
    with pytest.raises(ToolError, match="Mars/Olympus"):
        tool.call('{"timezone": "Mars/Olympus"}')
    outcome = invoke_tool(tool, {"timezone": "Mars/Olympus"})
    assert not outcome.ok
    assert outcome.content.startswith("Error:")


def test_schema_with_defs_is_inlined_and_the_call_works(servers: MCPConnections) -> None:
    tool = _tool(servers, "local-describe")
    point = tool.parameters["properties"]["point"]
    assert point["properties"]["x"]["type"] == "integer"
    assert "$ref" not in json.dumps(tool.parameters)
    # Lenient parsing, as the model writes arguments: single quotes, a trailing comma.
    assert tool.call("{'point': {'x': 1, 'y': 2}, 'label': 'a',}") == "a=(1, 2)"


def test_bad_arguments_are_a_tool_error(servers: MCPConnections) -> None:
    tool = _tool(servers, "local-describe")
    with pytest.raises(ToolError, match="not valid JSON"):
        tool.call("{point: ")
    assert not invoke_tool(tool, {"point": {"x": "not a number"}}).ok


def test_http_servers(servers: MCPConnections) -> None:
    assert _tool(servers, "web-describe").call({"point": {"x": 3, "y": 4}}) == "p=(3, 4)"
    assert _tool(servers, "sse-describe").call({"point": {"x": 5, "y": 6}}) == "p=(5, 6)"


def test_failed_servers_are_reported_and_the_others_work(
    servers: MCPConnections, log_dir: Path
) -> None:
    assert set(servers.failures) == {"missing", "crashy"}
    missing = servers.failures["missing"]
    assert missing == "missing: command 'definitely-not-a-command-4711' not found on PATH"
    crashy = servers.failures["crashy"]
    assert crashy.startswith("crashy: ") and str(log_dir / "crashy.log") in crashy
    assert "\n" not in crashy
    # The server's stderr went to its log file, not the terminal.
    assert "crashy-stderr-marker" in (log_dir / "crashy.log").read_text()
    assert not any(tool.name.startswith(("missing-", "crashy-")) for tool in servers.tools)


# --- start, timeouts, shutdown ---------------------------------------------------------------


def test_strict_mode_raises_one_line() -> None:
    conns = MCPConnections([_stdio("ghost", "no-such-mcp-command-4711")], strict=True)
    with pytest.raises(MCPServerError) as caught:
        conns.start()
    assert str(caught.value) == "ghost: command 'no-such-mcp-command-4711' not found on PATH"
    conns.close()  # idempotent after the failed start


def test_server_that_never_answers_misses_the_deadline_and_is_stopped() -> None:
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    mute = _stdio("mute", sys.executable, "-c", "import time; time.sleep(60)")
    started = time.monotonic()
    with MCPConnections([mute], start_timeout=1) as conns:
        assert conns.failures == {"mute": "mute: did not start within 1 s"}
        assert conns.tools == []
    assert time.monotonic() - started < 15
    assert _new_live_children(before) == []


def test_call_timeout_is_a_tool_error(local_server: Path) -> None:
    with MCPConnections([_stdio("local", sys.executable, str(local_server))], call_timeout=1) as c:
        nap = _tool(c, "local-nap")
        assert nap.call({"seconds": 0}) == "awake"
        with pytest.raises(ToolError, match=r"^local-nap did not answer within 1 s$"):
            nap.call({"seconds": 30})


def test_close_leaves_no_server_processes(local_server: Path) -> None:
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    specs = [
        _stdio("time", "uvx", "mcp-server-time"),
        _stdio("local", sys.executable, str(local_server)),
    ]
    conns = MCPConnections(specs, start_timeout=120)
    with conns:
        assert conns.failures == {}
        assert len(_new_live_children(before)) >= 2  # uvx and its python, our server
        assert "UTC" in _tool(conns, "time-get_current_time").call({"timezone": "UTC"})
    assert _new_live_children(before) == []
    conns.close()  # a second close does nothing
    with pytest.raises(ToolError, match="shut down"):
        _tool(conns, "local-describe").call({"point": {"x": 1, "y": 2}})


def _new_live_children(before: set[int]) -> list[psutil.Process]:
    """Child processes (at any depth) started since `before`, zombies left out."""
    alive = []
    for child in psutil.Process().children(recursive=True):
        with suppress(psutil.NoSuchProcess):
            if child.pid not in before and child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
    return alive


def test_repo_config_keeps_fetch_protections(tmp_path: Path, web_page: tuple[str, str]) -> None:
    url, secret = web_page
    with open_mcp_tools(REPO_CONFIG, strict=True, log_dir=tmp_path, start_timeout=180) as conns:
        assert {"time-get_current_time", "fetch-fetch"} <= {tool.name for tool in conns.tools}
        with pytest.raises(ToolError, match="not a public address") as caught:
            _tool(conns, "fetch-fetch").call({"url": url})
    assert secret not in str(caught.value)


def test_a_server_that_dies_gives_a_tool_error(local_server: Path) -> None:
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    with MCPConnections([_stdio("local", sys.executable, str(local_server))]) as conns:
        for child in _new_live_children(before):
            child.kill()
        psutil.wait_procs(_new_live_children(before), timeout=10)
        with pytest.raises(
            ToolError, match=r"^local-describe: the MCP server 'local' has stopped$"
        ):
            _tool(conns, "local-describe").call({"point": {"x": 1, "y": 2}})


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"mcpServers": {"time": {"command": "uvx",}}}', "not valid JSON"),
        ('{"mcpServers": {"time": {"command": "uvx", "cmd": "x"}}}', "allowed keys: command"),
        ('{"mcpServers": {"time": {"args": ["mcp-server-time"]}}}', 'needs "command"'),
        ('{"mcpServers": {"time": {"command": "uvx", "args": "mcp-server-time"}}}', '"args"'),
        ('{"mcpServers": {"time": {"command": "uvx", "env": {"A": 1}}}}', '"env"'),
        ('{"mcpServers": {"time": {"command": "uvx", "url": "http://h"}}}', "keep one"),
        ('{"mcpServers": {"web": {"url": "http://h", "type": "grpc"}}}', '"type"'),
        ('{"mcpServers": {"web": {"url": "ftp://h"}}}', "http://"),
        ('{"mcpServers": {"web": {"url": "http://h", "args": []}}}', "only a server with"),
        ('{"mcpServers": {"web": {"url": "http://h", "type": ["sse"]}}}', '"type"'),
        ('{"mcpServers": {"time": {"command": "uvx", "type": "sse"}}}', 'needs a "url"'),
        ('{"mcpServers": {"time": "uvx mcp-server-time"}}', "must be an object"),
        ('{"servers": {}}', '"mcpServers"'),
        ("[]", '"mcpServers"'),
    ],
)
def test_bad_config_is_one_clear_line(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "mcp_config.json"
    config.write_text(text)
    with pytest.raises(MCPConfigError) as caught:
        load_mcp_config(config)
    message = str(caught.value)
    assert "\n" not in message
    assert str(config) in message
    assert expected in message


def test_json_error_gives_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "mcp_config.json"
    config.write_text('{\n  "mcpServers": {\n    "time": {"command": "uvx",}\n  }\n}')
    with pytest.raises(MCPConfigError, match="line 3, column"):
        load_mcp_config(config)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(MCPConfigError, match="file not found") as caught:
        load_mcp_config(tmp_path / "nope.json")
    assert str(tmp_path / "nope.json") in str(caught.value)


def test_config_server_kinds(tmp_path: Path) -> None:
    config = tmp_path / "mcp_config.json"
    servers = {
        "a": {"command": "uvx", "args": ["x"], "env": {"K": "v"}},
        "b": {"url": "http://127.0.0.1:1/mcp"},
        "c": {"url": "http://127.0.0.1:1/sse", "type": "sse"},
        "d": {"url": "http://127.0.0.1:1/mcp", "type": "http"},
    }
    config.write_text(json.dumps({"mcpServers": servers}))
    assert load_mcp_config(config) == [
        MCPServerSpec(name="a", command="uvx", args=["x"], env={"K": "v"}, type="stdio"),
        MCPServerSpec(name="b", url="http://127.0.0.1:1/mcp", type="streamable-http"),
        MCPServerSpec(name="c", url="http://127.0.0.1:1/sse", type="sse"),
        MCPServerSpec(name="d", url="http://127.0.0.1:1/mcp", type="streamable-http"),
    ]


# --- units -----------------------------------------------------------------------------------


def test_server_environment_passes_certificates_and_proxies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", "/certs/ca.pem")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("UV_INDEX_URL", "https://index.example/simple")
    monkeypatch.setenv("SOME_SECRET_TOKEN", "hidden")
    env = server_environment({"HTTPS_PROXY": "http://other:8080"})
    assert env["SSL_CERT_FILE"] == "/certs/ca.pem"
    assert env["UV_INDEX_URL"] == "https://index.example/simple"
    assert env["HTTPS_PROXY"] == "http://other:8080"  # the config's env wins
    assert "PATH" in env
    assert "SOME_SECRET_TOKEN" not in env


def test_normalize_parameters_inlines_refs() -> None:
    schema = {
        "title": "searchArguments",
        "type": "object",
        "additionalProperties": False,
        "$defs": {
            "Range": {
                "type": "object",
                "properties": {"start": {"$ref": "#/$defs/Day"}, "end": {"$ref": "#/$defs/Day"}},
                "required": ["start"],
            },
            "Day": {"type": "string", "format": "date"},
            "Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}}},
        },
        "properties": {
            "query": {"type": "string"},
            "range": {"anyOf": [{"$ref": "#/$defs/Range"}, {"type": "null"}], "default": None},
            "day": {"$ref": "#/$defs/Day", "description": "One day."},
            "tree": {"$ref": "#/$defs/Node"},
        },
        "required": ["query", "gone"],
    }
    parameters = normalize_parameters(schema)
    assert set(parameters) == {"type", "properties", "required"}
    assert parameters["required"] == ["query"]
    props = parameters["properties"]
    assert props["range"]["anyOf"][0]["properties"]["end"] == {"type": "string", "format": "date"}
    assert props["day"] == {"type": "string", "format": "date", "description": "One day."}
    assert props["tree"]["properties"]["child"] == {}  # a recursive $ref stays open
    assert "$ref" not in json.dumps(parameters)
    assert is_tool_schema({"name": "s-search", "description": "", "parameters": parameters})
    instance = {"query": "q", "range": {"start": "2024-01-01"}, "day": "2024-01-02"}
    jsonschema.validate(instance, parameters)
    assert normalize_parameters(None) == {"type": "object", "properties": {}, "required": []}


def test_result_text_uses_placeholders_for_non_text() -> None:
    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text="hello"),
            types.ImageContent(type="image", data="aGk=", mime_type="image/png"),
        ]
    )
    assert result_text(result) == "hello\n[image: image/png]"
