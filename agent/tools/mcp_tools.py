"""MCP servers from `mcp_config.json`: their tools as Qwen-Agent tools, their prompts and
resources, and their requests to us (sampling, elicitation).

Our own adapter on the official `mcp` SDK (Qwen-Agent's `MCPManager` fails with `mcp` 2.x).
All servers run on one background thread with an asyncio event loop, start in parallel under
one deadline, and each MCP tool becomes a `BaseTool` named `<server>-<tool>` that the
synchronous rest of the app calls like any other tool. A server's `sampling/createMessage` and
`elicitation/create` requests are answered in a worker thread (the model generates, the user
is asked, while the loop goes on) by whoever `router` routes them to: the session whose turn
is running (`answering`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar

import anyio
import mcp_types as types
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import (
    DEFAULT_INHERITED_ENV_VARS,
    StdioServerParameters,
    get_default_environment,
    stdio_client,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from qwen_agent.tools.base import BaseTool

from agent.errors import AgentError, MCPReferenceError, MCPServerError, ToolError
from agent.tools.invoke import parse_arguments
from agent.tools.mcp_config import MCPServerSpec, load_mcp_config
from agent.tools.mcp_context import ResourceContent, resource_block
from agent.tools.mcp_requests import (
    ElicitationRequest,
    RequestRefused,
    SamplingRequest,
    ServerRequests,
    TurnRouter,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


# Variables a server needs to reach a package index behind a proxy or a custom CA.
PASS_THROUGH_ENV_VARS = (
    "HOME",
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "PIP_CERT",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)
PASS_THROUGH_ENV_PREFIXES = ("UV_", "NPM_CONFIG_", "npm_config_")
USER_REFUSED = -1  # the error code MCP suggests for a request the user did not allow


@dataclass(frozen=True)
class PromptArgumentInfo:
    """One argument of a server's prompt."""

    name: str
    description: str
    required: bool


@dataclass(frozen=True)
class PromptInfo:
    """A prompt a server offers (`agent run --prompt-from SERVER/NAME`)."""

    server: str
    name: str
    description: str
    arguments: list[PromptArgumentInfo]


@dataclass(frozen=True)
class ResourceInfo:
    """A resource a server lists (`agent run --attach SERVER:URI`)."""

    server: str
    uri: str
    name: str
    mime_type: str
    description: str


# --- environment and schemas -----------------------------------------------------------------


def server_environment(
    extra: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment a stdio server starts with: the SDK's safe default, plus pass-through.

    The SDK's `get_default_environment()` keeps only HOME, LOGNAME, PATH, SHELL, TERM and USER.
    `uvx` asks the package index at every start (and `mcp-server-fetch` runs npm), so without
    the certificate, proxy, index and `UV_*` variables they fail behind a proxy or a custom CA.
    The server's own `env` from the config goes on top. `environ` is the environment of the
    command the user ran (the resident service passes each client's own), else this process's.
    """
    source = os.environ if environ is None else environ
    env = get_default_environment() if environ is None else _default_environment(environ)
    for key, value in source.items():
        if key in PASS_THROUGH_ENV_VARS or key.startswith(PASS_THROUGH_ENV_PREFIXES):
            env[key] = value
    return env | dict(extra or {})


def _default_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What the SDK's `get_default_environment()` keeps, taken from `environ`."""
    return {key: environ[key] for key in DEFAULT_INHERITED_ENV_VARS if key in environ}


def normalize_parameters(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """Turn an MCP input schema into parameters Qwen-Agent accepts.

    Qwen-Agent wants exactly `type`, `properties` and `required`: `$ref`s are inlined (a
    recursive one becomes an open schema), `$defs`, `title` and the like are dropped.
    """
    root = dict(schema or {})
    properties = _inline_refs(root.get("properties") or {}, root, ())
    required = [name for name in root.get("required") or [] if name in properties]
    return {"type": "object", "properties": properties, "required": required}


def _inline_refs(node: Any, root: Mapping[str, Any], expanding: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline_refs(item, root, expanding) for item in node]
    if not isinstance(node, dict):
        return node
    rest = {
        key: _inline_refs(value, root, expanding)
        for key, value in node.items()
        if key not in ("$ref", "$defs", "definitions")
    }
    ref = node.get("$ref")
    if not isinstance(ref, str) or ref in expanding:
        return rest
    target = _resolve_ref(root, ref)
    if target is None:
        return rest
    return {**_inline_refs(target, root, (*expanding, ref)), **rest}


def _resolve_ref(root: Mapping[str, Any], ref: str) -> Any:
    """The schema a local `#/...` JSON pointer names, or None."""
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# --- tools -----------------------------------------------------------------------------------


class MCPTool(BaseTool):
    """One MCP tool as a Qwen-Agent tool; `call` raises `ToolError` when the tool fails."""

    def __init__(
        self,
        name: str,
        description: str,
        parameters: dict[str, Any],
        invoke: Callable[[dict[str, Any]], str],
        server: str = "",
    ) -> None:
        self.name = name
        self.server = server
        self.description = description
        self.parameters = parameters
        self._invoke = invoke
        super().__init__()

    def call(self, params: str | dict[str, Any], **kwargs: Any) -> str:
        """Run the tool with model-style arguments (a JSON/JSON5 string or a dict)."""
        return self._invoke(parse_arguments(self.name, params))


def result_text(result: types.CallToolResult) -> str:
    """The text of a tool result; non-text content becomes a short placeholder."""
    parts = [_content_text(item) for item in result.content]
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _content_text(item: Any) -> str:
    if isinstance(item, types.TextContent):
        return item.text
    if isinstance(item, types.ImageContent | types.AudioContent):
        return f"[{item.type}: {item.mime_type}]"
    if isinstance(item, types.EmbeddedResource):
        text = getattr(item.resource, "text", None)
        return text if isinstance(text, str) else f"[resource: {item.resource.uri}]"
    if isinstance(item, types.ResourceLink):
        return f"[resource: {item.uri}]"
    return f"[{getattr(item, 'type', 'content')}]"


def resource_content(
    item: types.TextResourceContents | types.BlobResourceContents,
) -> ResourceContent:
    """A resource's content item: its text, or for binary data only its size."""
    if isinstance(item, types.TextResourceContents):
        return ResourceContent(item.uri, item.mime_type, item.text, len(item.text))
    try:
        size = len(base64.b64decode(item.blob))
    except (binascii.Error, ValueError):
        size = len(item.blob) * 3 // 4
    return ResourceContent(item.uri, item.mime_type, None, size)


def prompt_messages(server: str, result: types.GetPromptResult) -> list[dict[str, str]]:
    """A rendered prompt's messages as role and text; an embedded resource becomes text (a
    binary one a note), and consecutive messages of one role are joined."""
    messages: list[dict[str, str]] = []
    for message in result.messages:
        item = message.content
        if isinstance(item, types.EmbeddedResource):
            content = resource_content(item.resource)
            text = resource_block(server, content.uri, [content], None)[0]
        else:
            text = _content_text(item)
        if messages and messages[-1]["role"] == message.role:
            messages[-1]["content"] += "\n\n" + text
        else:
            messages.append({"role": message.role, "content": text})
    return messages


def sampling_messages(params: types.CreateMessageRequestParams) -> list[dict[str, str]]:
    """A sampling request's messages as role and text (non-text content as a placeholder)."""
    messages = []
    for message in params.messages:
        items = message.content if isinstance(message.content, list) else [message.content]
        messages.append(
            {"role": message.role, "content": "\n".join(_content_text(i) for i in items)}
        )
    return messages


def unknown_server(server: str, names: Iterable[str]) -> MCPReferenceError:
    """The error for a server this run does not have."""
    listed = ", ".join(sorted(names)) or "none"
    return MCPReferenceError(
        f"no MCP server {server!r} in this run (servers: {listed}); see mcp_config.json and --tools"
    )


# --- connections -----------------------------------------------------------------------------


class MCPConnections:
    """The running MCP servers and their tools; a context manager (close it when done).

    `tools` holds one `BaseTool` per MCP tool. A server that fails to start is left out and
    its one-line reason kept in `failures` (with `strict=True`, `start` raises instead).
    Each stdio server's stderr goes to `<log_dir>/<server>.log`, or nowhere without `log_dir`.
    Prompts and resources are asked of the servers when wanted (`list_prompts`,
    `get_prompt`, `list_resources`, `read_resource`). The servers' requests go to `router`
    (shared by connections that serve several sessions, as the service's pool does).
    """

    def __init__(
        self,
        specs: Iterable[MCPServerSpec],
        *,
        start_timeout: float = 60.0,
        call_timeout: float = 120.0,
        strict: bool = False,
        log_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
        router: TurnRouter | None = None,
    ) -> None:
        self.specs = list(specs)
        self.environ = environ
        self.router = router or TurnRouter()
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.strict = strict
        self.log_dir = log_dir
        self.tools: list[MCPTool] = []
        self.failures: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lifetimes: list[anyio.CancelScope] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._logs: list[TextIO] = []
        self._sessions: dict[str, ClientSession] = {}
        self._closed = False

    def __enter__(self) -> MCPConnections:
        if self._loop is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> MCPConnections:
        """Start every server in parallel; return once each is ready or has failed."""
        if self._loop is not None:
            raise RuntimeError("MCPConnections.start() called twice")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp", daemon=True)
        self._thread.start()
        try:
            outcomes = self._run(self._start_all())
        except BaseException:
            self.close()
            raise
        for spec, outcome in zip(self.specs, outcomes, strict=True):
            if isinstance(outcome, str):
                self.failures[spec.name] = outcome
            else:
                self.tools.extend(outcome)
        if self.strict and self.failures:
            self.close()
            raise MCPServerError("; ".join(self.failures.values()))
        return self

    @property
    def alive(self) -> bool:
        """Whether every server that started is still running."""
        return not self._closed and not any(task.done() for task in self._tasks)

    def close(self) -> None:
        """Stop every server and wait until its process is gone; safe to call again."""
        if self._closed or self._loop is None or self._thread is None:
            self._closed = True
            return
        self._closed = True
        try:
            self._run(self._stop_all())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            for log in self._logs:
                log.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _start_all(self) -> list[list[MCPTool] | str]:
        loop = asyncio.get_running_loop()
        readies: list[asyncio.Future[list[MCPTool] | str]] = []
        deadline = anyio.current_time() + self.start_timeout
        for spec in self.specs:
            lifetime = anyio.CancelScope(deadline=deadline)
            ready: asyncio.Future[list[MCPTool] | str] = loop.create_future()
            self._lifetimes.append(lifetime)
            self._tasks.append(loop.create_task(self._serve(spec, lifetime, ready)))
            readies.append(ready)
        return list(await asyncio.gather(*readies))

    async def _stop_all(self) -> None:
        for lifetime in self._lifetimes:
            lifetime.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(
        self,
        spec: MCPServerSpec,
        lifetime: anyio.CancelScope,
        ready: asyncio.Future[list[MCPTool] | str],
    ) -> None:
        """Run one server for the lifetime of the connections (until `lifetime` is cancelled).

        Everything is entered and left in this one task, as anyio requires; cancelling
        `lifetime` (its deadline during start-up, or `close`) makes the SDK stop the server.
        """
        try:
            with lifetime:
                async with (
                    self._transport(spec) as (read, write),
                    ClientSession(read, write, **self._callbacks(spec.name)) as s,
                ):
                    await s.initialize()
                    listed = await _all_pages(s.list_tools, "tools")
                    lifetime.deadline = math.inf
                    self._sessions[spec.name] = s
                    ready.set_result(self._make_tools(spec, s, listed))
                    await anyio.sleep_forever()
        except Exception as exc:
            reason = _one_line(f"{spec.name}: {self._failure_reason(spec, exc)}")
            if ready.done():
                logger.warning("MCP server %s", reason)
            else:
                ready.set_result(reason)
        if not ready.done():
            ready.set_result(f"{spec.name}: did not start within {self.start_timeout:g} s")

    def _transport(self, spec: MCPServerSpec) -> AbstractAsyncContextManager[Any]:
        if spec.url is not None:
            return sse_client(spec.url) if spec.type == "sse" else streamable_http_client(spec.url)
        assert spec.command is not None
        params = StdioServerParameters(
            command=spec.command, args=spec.args, env=server_environment(spec.env, self.environ)
        )
        return stdio_client(params, errlog=self._open_log(spec.name))

    def _open_log(self, server: str) -> TextIO:
        path: str | Path = os.devnull
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            path = self._log_path(server)
        log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._logs.append(log)
        return log

    def _log_path(self, server: str) -> Path:
        assert self.log_dir is not None
        return self.log_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', server)}.log"

    def _failure_reason(self, spec: MCPServerSpec, exc: BaseException) -> str:
        exc = _first_leaf(exc)
        if isinstance(exc, FileNotFoundError) and spec.command is not None:
            where = "" if os.sep in spec.command else " on PATH"
            return f"command '{spec.command}' not found{where}"
        if isinstance(exc, OSError) and spec.command is not None:
            return f"cannot run '{spec.command}': {exc.strerror or exc}"
        if isinstance(exc, MCPError) and exc.code == types.CONNECTION_CLOSED:
            return f"closed the connection while starting ({self._where_to_look(spec)})"
        if isinstance(exc, MCPError):
            return f"failed to start: {exc.error.message}"
        where = f" ({spec.url})" if spec.url else ""
        return f"failed to start{where}: {type(exc).__name__}: {exc}"

    def _where_to_look(self, spec: MCPServerSpec) -> str:
        if spec.url is not None:
            return f"is {spec.url} an MCP endpoint?"
        if self.log_dir is None:
            return "its stderr was discarded; give a log directory to see it"
        return f"see {self._log_path(spec.name)}"

    def _make_tools(
        self, spec: MCPServerSpec, session: ClientSession, listed: list[types.Tool]
    ) -> list[MCPTool]:
        tools: list[MCPTool] = []
        for mcp_tool in listed:
            name = f"{spec.name}-{mcp_tool.name}"
            invoke = self._invoker(session, spec.name, mcp_tool.name)
            description = mcp_tool.description or mcp_tool.title or ""
            try:
                parameters = normalize_parameters(mcp_tool.input_schema)
                tools.append(MCPTool(name, description, parameters, invoke, server=spec.name))
            except ValueError as exc:
                logger.warning("Skipping MCP tool %s: its input schema is unusable (%s)", name, exc)
        return tools

    def _invoker(
        self, session: ClientSession, server: str, mcp_name: str
    ) -> Callable[[dict[str, Any]], str]:
        name = f"{server}-{mcp_name}"

        def invoke(arguments: dict[str, Any]) -> str:
            if self._closed:
                raise ToolError(f"{name}: the MCP servers have been shut down")
            try:
                result = self._run(self._call(session, mcp_name, arguments))
            except TimeoutError:
                raise ToolError(f"{name} did not answer within {self.call_timeout:g} s") from None
            except MCPError as exc:
                if exc.code == types.CONNECTION_CLOSED:
                    raise ToolError(f"{name}: the MCP server '{server}' has stopped") from None
                raise ToolError(f"{name}: {exc.error.message}") from None
            if result.is_error:
                raise ToolError(result_text(result) or f"{name} failed without a message")
            return result_text(result)

        return invoke

    async def _call(
        self, session: ClientSession, name: str, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        with anyio.fail_after(self.call_timeout):
            return await session.call_tool(name, arguments)

    # --- prompts and resources -------------------------------------------------------------

    @property
    def servers(self) -> list[str]:
        """The servers that started, by name."""
        return list(self._sessions)

    def list_prompts(self) -> list[PromptInfo]:
        """Every running server's prompts (a server that fails to list them is logged)."""
        return [
            PromptInfo(
                server,
                prompt.name,
                prompt.description or prompt.title or "",
                [
                    PromptArgumentInfo(a.name, a.description or "", bool(a.required))
                    for a in prompt.arguments or []
                ],
            )
            for server in self.servers
            for prompt in self._listed(server, "prompts")
        ]

    def list_resources(self) -> list[ResourceInfo]:
        """Every running server's listed resources (a server that fails to list is logged)."""
        return [
            ResourceInfo(
                server,
                resource.uri,
                resource.title or resource.name,
                resource.mime_type or "",
                resource.description or "",
            )
            for server in self.servers
            for resource in self._listed(server, "resources")
        ]

    def get_prompt(self, server: str, name: str, arguments: dict[str, str]) -> list[dict[str, str]]:
        """The server's prompt `name` rendered with `arguments`, as role and text messages;
        `MCPReferenceError` for an unknown prompt, or an argument missing or unknown."""
        prompts = {prompt.name: prompt for prompt in self._prompts_of(server)}
        prompt = prompts.get(name)
        if prompt is None:
            listed = ", ".join(sorted(prompts)) or "none"
            raise MCPReferenceError(
                f"MCP server {server!r} has no prompt {name!r} (its prompts: {listed})"
            )
        declared = prompt.arguments or []
        unknown = sorted(set(arguments) - {a.name for a in declared})
        if unknown:
            known = ", ".join(a.name for a in declared) or "none"
            raise MCPReferenceError(
                f"prompt {server}/{name} has no argument {', '.join(unknown)} (its arguments: "
                f"{known})"
            )
        missing = [a.name for a in declared if a.required and a.name not in arguments]
        if missing:
            raise MCPReferenceError(
                f"prompt {server}/{name} needs the argument {', '.join(missing)}; give it as "
                f"{missing[0]}=VALUE"
            )
        result = self._ask(
            server, f"prompt {server}/{name}", lambda s: s.get_prompt(name, arguments)
        )
        return prompt_messages(server, result)

    def read_resource(self, server: str, uri: str) -> list[ResourceContent]:
        """The resource's content items; `MCPReferenceError` when the server cannot give it."""
        result = self._ask(server, f"resource {server}:{uri}", lambda s: s.read_resource(uri))
        return [resource_content(item) for item in result.contents]

    def answering(self, answerer: ServerRequests) -> contextlib.AbstractContextManager[None]:
        """The servers' requests go to `answerer` while the block runs (a session's turn)."""
        return self.router.serving(answerer)

    def _prompts_of(self, server: str) -> list[types.Prompt]:
        session = self._session(server)
        capabilities = session.server_capabilities
        if capabilities is None or capabilities.prompts is None:
            raise MCPReferenceError(f"MCP server {server!r} offers no prompts")
        return list(
            self._ask(server, "its prompts", lambda s: _all_pages(s.list_prompts, "prompts"))
        )

    def _listed(self, server: str, kind: str) -> list[Any]:
        """A server's prompts or resources, or none (and a warning) when it fails to list."""
        capabilities = self._session(server).server_capabilities
        if capabilities is None or getattr(capabilities, kind) is None:
            return []
        try:
            return list(
                self._ask(
                    server, f"its {kind}", lambda s: _all_pages(getattr(s, f"list_{kind}"), kind)
                )
            )
        except AgentError as exc:
            logger.warning("MCP server %s did not list its %s: %s", server, kind, exc)
            return []

    def _session(self, server: str) -> ClientSession:
        if self._closed:
            raise MCPServerError("the MCP servers have been shut down")
        session = self._sessions.get(server)
        if session is None:
            raise unknown_server(server, self._sessions)
        return session

    def _ask(self, server: str, what: str, request: Callable[[ClientSession], Awaitable[_T]]) -> _T:
        """Send one request to `server` and wait for its answer (within the call timeout)."""
        session = self._session(server)

        async def timed() -> _T:
            with anyio.fail_after(self.call_timeout):
                return await request(session)

        try:
            return self._run(timed())
        except TimeoutError:
            raise MCPServerError(
                f"MCP server {server!r} did not answer within {self.call_timeout:g} s ({what})"
            ) from None
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                raise MCPServerError(f"the MCP server {server!r} has stopped") from None
            raise MCPReferenceError(f"{what}: {exc.error.message}") from None

    # --- the servers' requests -------------------------------------------------------------

    def _callbacks(self, server: str) -> dict[str, Any]:
        """The SDK callbacks that answer `server`'s sampling and elicitation requests."""

        async def sampling(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult | types.ErrorData:
            request = SamplingRequest(
                server=server,
                messages=sampling_messages(params),
                max_tokens=params.max_tokens,
                system_prompt=params.system_prompt,
            )
            answered = await _in_worker(self.router.sample, request)
            if isinstance(answered, types.ErrorData):
                return answered
            return types.CreateMessageResult(
                role="assistant",
                content=types.TextContent(type="text", text=answered.text),
                model=answered.model,
                stop_reason="endTurn",
            )

        async def elicitation(
            context: ClientRequestContext, params: types.ElicitRequestParams
        ) -> types.ElicitResult | types.ErrorData:
            if isinstance(params, types.ElicitRequestURLParams):
                request = ElicitationRequest(server, params.message, url=params.url)
            else:
                request = ElicitationRequest(server, params.message, dict(params.requested_schema))
            answered = await _in_worker(self.router.elicit, request)
            if isinstance(answered, types.ErrorData):
                return answered
            content = answered.content if answered.action == "accept" else None
            return types.ElicitResult(action=answered.action, content=content)  # type: ignore[arg-type]

        return {"sampling_callback": sampling, "elicitation_callback": elicitation}


async def _in_worker(answer: Callable[[Any], _T], request: Any) -> _T | types.ErrorData:
    """`answer(request)` in a worker thread (it asks the user, or has the model generate,
    while the loop serves the other servers); a refusal or failure as the request's error."""
    try:
        return await anyio.to_thread.run_sync(answer, request, abandon_on_cancel=True)
    except RequestRefused as exc:
        return types.ErrorData(code=USER_REFUSED, message=str(exc))
    except Exception as exc:  # the model failed: the server gets the reason
        logger.warning("answering an MCP server's request failed: %s", exc)
        return types.ErrorData(code=types.INTERNAL_ERROR, message=f"{type(exc).__name__}: {exc}")


async def _all_pages(list_page: Callable[..., Awaitable[Any]], items: str) -> list[Any]:
    """Every item of a paginated list (`tools`, `prompts`, `resources`)."""
    found: list[Any] = []
    cursor: str | None = None
    while True:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await list_page(params=params)
        found.extend(getattr(page, items))
        cursor = page.next_cursor
        if not cursor:
            return found


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real exception inside (nested) exception groups from anyio task groups."""
    while isinstance(getattr(exc, "exceptions", None), tuple) and exc.exceptions:  # type: ignore[attr-defined]
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


def _one_line(text: str) -> str:
    return " ".join(text.split())


def open_mcp_tools(
    config_path: Path,
    *,
    strict: bool = False,
    log_dir: Path | None = None,
    start_timeout: float = 60.0,
    call_timeout: float = 120.0,
    only: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> MCPConnections:
    """Load `config_path`, start its servers (those named in `only`, if given) and return the
    connections (the caller closes)."""
    specs = [s for s in load_mcp_config(config_path) if only is None or s.name in only]
    connections = MCPConnections(
        specs,
        start_timeout=start_timeout,
        call_timeout=call_timeout,
        strict=strict,
        log_dir=log_dir,
        environ=environ,
    )
    return connections.start()
