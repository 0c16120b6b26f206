"""The Starlette app: `/v1/chat/completions` (streamed as server-sent events, or whole),
`/v1/models`, `/health` (503 until the model is loaded) and `/metrics` (Prometheus text)."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agent.server.generation import Finish, Generation, ModelService, PromptTooLong, QueueFull
from agent.server.metrics import metrics_text
from agent.server.protocol import (
    CompletionBuilder,
    Limits,
    RequestError,
    error_body,
    parse_request,
)
from agent.server.stream import Delta

RETRY_AFTER_S = 2
NO_KEY = "a valid API key is required (Authorization: Bearer KEY)"
_END = object()


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(error_body(message, kind), status_code=status, headers=headers)


def create_app(
    service: ModelService, api_key: str | None = None, limits: Limits | None = None
) -> Starlette:
    """The server's app over `service` (which loads its model in the background)."""
    limits = limits or Limits()

    def refusal(request: Request) -> Response | None:
        """401 unless the request carries the API key (when there is one)."""
        given = request.headers.get("authorization", "")
        if api_key is None or hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            return None
        return _error(401, NO_KEY, "authentication_error")

    async def health(request: Request) -> Response:
        if service.load_error:
            return JSONResponse({"status": "error", "error": service.load_error}, status_code=503)
        if not service.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        if refused := refusal(request):
            return refused
        card = {"id": service.model_name, "object": "model", "created": 0, "owned_by": "agent"}
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(request: Request) -> Response:
        return Response(metrics_text(service.stats), media_type="text/plain; version=0.0.4")

    async def completions(request: Request) -> Response:
        if refused := refusal(request):
            return refused
        if not service.ready:
            reason = service.load_error or "the model is still loading"
            return _error(503, reason, "server_error", {"Retry-After": str(RETRY_AFTER_S)})
        try:
            raw = await request.body()
            if len(raw) > limits.body_bytes:
                raise RequestError(413, f"the body is over {limits.body_bytes} bytes")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise RequestError(400, f"the body is not valid JSON: {exc}") from None
            generation, stream, include_usage = parse_request(body, service.model_name, limits)
            if service.waiting_full():
                raise QueueFull
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except QueueFull:
            return _error(503, "the server is busy: too many requests wait", "server_error",
                          {"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        builder = CompletionBuilder(service.model_name)
        if stream:
            events = _sse(service, generation, builder, include_usage)
            return StreamingResponse(events, media_type="text/event-stream")
        return await _whole(request, service, generation, builder)

    routes = [
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    return Starlette(routes=routes)


async def _items(
    service: ModelService, generation: Generation, cancel: threading.Event
) -> AsyncIterator[Any]:
    """What the generation thread produces, as it comes; `cancel` stops it within a token."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def work() -> None:
        try:
            for item in service.generate(generation, cancel):
                loop.call_soon_threadsafe(inbox.put_nowait, item)
        except BaseException as exc:  # handed to the request, which answers with it
            loop.call_soon_threadsafe(inbox.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(inbox.put_nowait, _END)

    threading.Thread(target=work, daemon=True, name="generation").start()
    try:
        while (item := await inbox.get()) is not _END:
            yield item
    finally:
        cancel.set()


def _problem(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, PromptTooLong):
        return 400, f"the prompt is {exc.tokens} tokens, over the model's context"
    if isinstance(exc, QueueFull):
        return 503, "the server is busy: too many requests wait"
    return 500, f"generation failed: {type(exc).__name__}: {exc}"


async def _sse(service: ModelService, generation: Generation, builder: CompletionBuilder,
               include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
    cancel = threading.Event()
    yield _event(builder.first_chunk())
    async for item in _items(service, generation, cancel):
        if isinstance(item, BaseException):
            status, message = _problem(item)
            yield _event(
                error_body(message, "server_error" if status >= 500 else "invalid_request_error")
            )
            break
        if isinstance(item, Delta):
            yield _event(builder.add(item))
        elif isinstance(item, Finish):
            yield _event(builder.last_chunk(item))
            if include_usage:
                yield _event(builder.usage_chunk(item))
    yield "data: [DONE]\n\n"


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _whole(request: Request, service: ModelService, generation: Generation,
                 builder: CompletionBuilder) -> Response:  # fmt: skip
    cancel = threading.Event()
    finish: Finish | None = None
    items = _items(service, generation, cancel)
    watcher = asyncio.create_task(_watch_disconnect(request, cancel))
    try:
        async for item in items:
            if isinstance(item, BaseException):
                status, message = _problem(item)
                kind = "server_error" if status >= 500 else "invalid_request_error"
                return _error(status, message, kind)
            if isinstance(item, Delta):
                builder.add(item)
            elif isinstance(item, Finish):
                finish = item
    finally:
        watcher.cancel()
    if finish is None or finish.reason == "cancelled":
        return _error(499, "the client went away", "server_error")
    return JSONResponse(builder.whole(finish))


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.2)
