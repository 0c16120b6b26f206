"""Answering an admitted request: its choices generate in threads (`Feed`), and their items
become server-sent events or one JSON response. Everything that could refuse the request
was decided before this point; only a failure inside generation reaches a stream."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from agent.server.errors import ApiError, error_body
from agent.server.generation import Finish, Job, ModelService, Scores
from agent.server.responses import ChatBuilder, TextBuilder
from agent.server.stream import Delta

_END = object()
Builder = ChatBuilder | TextBuilder


class Feed:
    """The items of one request's choices, tagged with their index, as the threads make
    them; `cancel` stops every choice within a token."""

    def __init__(self, service: ModelService, jobs: list[Job]) -> None:
        self.cancel = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._inbox: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._open = len(jobs)
        for index, job in enumerate(jobs):
            thread = threading.Thread(
                target=self._work, args=(service, index, job), daemon=True, name="generation"
            )
            thread.start()

    def _work(self, service: ModelService, index: int, job: Job) -> None:
        put = self._loop.call_soon_threadsafe
        try:
            for item in service.generate(job, self.cancel):
                put(self._inbox.put_nowait, (index, item))
        except BaseException as exc:  # handed to the request, which answers with it
            put(self._inbox.put_nowait, (index, exc))
        finally:
            put(self._inbox.put_nowait, (index, _END))

    async def items(self) -> AsyncIterator[tuple[int, Any]]:
        """(choice index, delta / scores / finish / exception) until every choice ends."""
        try:
            while self._open:
                index, item = await self._inbox.get()
                if item is _END:
                    self._open -= 1
                else:
                    yield index, item
        finally:
            self.cancel.set()


class EventStream(StreamingResponse):
    """Server-sent events; generation stops when the response ends, however it ends."""

    def __init__(self, content: AsyncIterator[str], cancel: threading.Event) -> None:
        super().__init__(content, media_type="text/event-stream")
        self._cancel = cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cancel.set()


def _failure(exc: BaseException) -> ApiError:
    return ApiError(500, f"generation failed: {type(exc).__name__}: {exc}")


def _take(builder: Builder, index: int, item: Any) -> dict[str, Any] | None:
    """Give `item` to the builder; the chunk it makes, if any."""
    if isinstance(item, Scores):
        builder.score(index, item)
        return None
    if isinstance(item, Delta):
        return builder.add(index, item)
    assert isinstance(item, Finish)
    return builder.last_chunk(index, item)


def stream(feed: Feed, builder: Builder, include_usage: bool) -> Response:
    """The answer as server-sent events."""

    async def events() -> AsyncIterator[str]:
        for opening in builder.first_chunks():
            yield _event(opening)
        async for index, item in feed.items():
            if isinstance(item, BaseException):
                yield _event(_failure(item).body())
                break
            if (chunk := _take(builder, index, item)) is not None:
                yield _event(chunk)
        else:
            if include_usage:
                yield _event(builder.usage_chunk())
        yield "data: [DONE]\n\n"

    return EventStream(events(), feed.cancel)


async def whole(request: Request, feed: Feed, builder: Builder) -> Response:
    """The answer as one JSON response, once every choice has finished."""
    watcher = asyncio.create_task(_watch_disconnect(request, feed.cancel))
    try:
        async for index, item in feed.items():
            if isinstance(item, BaseException):
                return _failure(item).response()
            _take(builder, index, item)
    finally:
        watcher.cancel()
    if any(c.finish is None or c.finish.reason == "cancelled" for c in builder.choices):
        return JSONResponse(error_body("the client went away", "server_error"), status_code=499)
    return JSONResponse(builder.whole())


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(0.2)
