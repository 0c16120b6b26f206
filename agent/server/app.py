"""The Starlette app: `/v1/chat/completions` and `/v1/completions` (streamed as server-sent
events, or whole), `/v1/models`, `/tokenize`, `/detokenize`, `/health` (503 until the model is
loaded) and `/metrics` (Prometheus text).

A request is decided before its status line: access (agent/server/guard.py), key, body,
fields, the prompt against the context, the grammar, and a place in the queue; any refusal is
OpenAI's error object with its status (agent/server/errors.py)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.engine.loading import LoadedModel
from agent.server.errors import (
    RETRY_AFTER_S,
    ApiError,
    api_error,
    busy,
    error_body,
    http_error,
    unexpected_error,
)
from agent.server.generation import (
    BadGeneration,
    Generation,
    Job,
    ModelService,
    PromptTooLong,
    QueueFull,
)
from agent.server.guard import Access, AccessGuard
from agent.server.logprobs import TokenTexts
from agent.server.metrics import metrics_text
from agent.server.protocol import ChatRequest, Limits, parse_request
from agent.server.replies import Feed, stream, whole
from agent.server.responses import ChatBuilder, TextBuilder
from agent.server.text_protocol import TextRequest, parse_text_request
from agent.server.tokens import detokenize, tokenize

NO_KEY = "a valid API key is required (Authorization: Bearer KEY)"


def create_app(
    service: ModelService,
    api_key: str | None = None,
    limits: Limits | None = None,
    access: Access | None = None,
) -> Starlette:
    """The server's app over `service` (which loads its model in the background); `access`
    says the address it is reached at and the browser origins allowed."""
    limits = limits or Limits()
    access = replace(access or Access(), api_key=api_key is not None)

    def authorize(request: Request) -> None:
        """401 unless the request carries the API key (when there is one)."""
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), api_key.encode()
        ):
            raise ApiError(401, NO_KEY, code="invalid_api_key")

    def loaded() -> LoadedModel:
        """The model, or 503 while it loads (or after it failed to)."""
        if service.loaded is None:
            reason = service.load_error or "the model is still loading"
            raise ApiError(503, reason, headers={"Retry-After": str(RETRY_AFTER_S)})
        return service.loaded

    async def body(request: Request) -> Any:
        """The request's JSON body, after the key and size checks."""
        authorize(request)
        kept, size = bytearray(), 0
        async for chunk in request.stream():  # read to the end, so the client sees the answer
            size += len(chunk)
            if size <= limits.body_bytes:
                kept += chunk
        if size > limits.body_bytes:
            raise ApiError(413, f"the body is over {limits.body_bytes} bytes")
        try:
            return json.loads(kept)
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None

    async def admit(generations: list[Generation], param: str) -> list[Job]:
        """The request's place in the queue, or the error that refuses it."""
        loaded()
        try:
            jobs = await run_in_threadpool(service.prepare, generations)
        except PromptTooLong as exc:
            raise ApiError(400, str(exc), param, "context_length_exceeded") from None
        except BadGeneration as exc:
            raise ApiError(400, str(exc), exc.param) from None
        try:  # no await from here until the generation threads own the places
            return service.enqueue(jobs)
        except QueueFull:
            raise busy() from None

    def texts(generations: list[Generation]) -> TokenTexts | None:
        if generations[0].logprobs is None:
            return None
        return TokenTexts(loaded().tokenizer)

    async def health(request: Request) -> Response:
        if service.load_error:
            error = error_body(service.load_error, "server_error")
            return JSONResponse({"status": "error", **error}, status_code=503)
        if not service.ready:
            error = error_body("the model is still loading", "server_error")
            return JSONResponse({"status": "loading", **error}, status_code=503)
        return JSONResponse({"status": "ok"})

    def card() -> dict[str, Any]:
        return {"id": service.model_name, "object": "model", "created": service.created,
                "owned_by": "agent"}  # fmt: skip

    async def models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [card()]})

    async def model(request: Request) -> Response:
        authorize(request)
        name = request.path_params["model"]
        if name != service.model_name:
            message = (
                f"the model {name!r} does not exist; this server serves {service.model_name!r}"
            )
            raise ApiError(404, message, "model", "model_not_found")
        return JSONResponse(card())

    async def metrics(request: Request) -> Response:
        return Response(metrics_text(service.stats), media_type="text/plain; version=0.0.4")

    def generation_route(
        parse: Callable[[Any, str, Limits], ChatRequest | TextRequest],
        param: str,
        builder_type: type[ChatBuilder] | type[TextBuilder],
    ) -> Callable[[Request], Awaitable[Response]]:
        """A route that generates: checked, admitted, then answered whole or streamed."""

        async def route(request: Request) -> Response:
            raw = await body(request)
            loaded()
            asked = parse(raw, service.model_name, limits)
            jobs = await admit(asked.choices, param)
            scored = texts(asked.choices)
            builder = builder_type(service.model_name, len(jobs), asked.n, scored)
            feed = Feed(service, jobs)
            if asked.stream:
                return stream(feed, builder, asked.include_usage)
            return await whole(request, feed, builder)

        return route

    async def tokenize_route(request: Request) -> Response:
        raw = await body(request)
        return JSONResponse(tokenize(raw, loaded(), service.model_name, limits))

    async def detokenize_route(request: Request) -> Response:
        raw = await body(request)
        return JSONResponse(detokenize(raw, loaded(), service.model_name))

    routes = [
        Route(
            "/v1/chat/completions",
            generation_route(parse_request, "messages", ChatBuilder),
            methods=["POST"],
        ),
        Route(
            "/v1/completions",
            generation_route(parse_text_request, "prompt", TextBuilder),
            methods=["POST"],
        ),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/tokenize", tokenize_route, methods=["POST"]),
        Route("/detokenize", detokenize_route, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    handlers = {HTTPException: http_error, ApiError: api_error, Exception: unexpected_error}
    return Starlette(
        routes=routes,
        exception_handlers=handlers,
        middleware=[Middleware(AccessGuard, access=access)],
    )
