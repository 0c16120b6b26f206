"""Every error the server gives, as OpenAI's error object with the right status: `ApiError`
for the requests it refuses, and the handlers that turn Starlette's own (404, 405) and any
unexpected exception into the same shape."""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("agent")
RETRY_AFTER_S = 2
_KINDS = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}


class ApiError(Exception):
    """A request the server refuses: status, one-line message, and OpenAI's `param` / `code`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """`{"error": {...}}` for this error."""
        return error_body(str(self), error_kind(self.status), self.param, self.code)

    def response(self) -> Response:
        """The whole HTTP answer."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def busy() -> ApiError:
    """503 for a full queue, with `Retry-After`."""
    return ApiError(503, "the server is busy: too many requests wait", code="server_busy",
                    headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip


def error_kind(status: int) -> str:
    """OpenAI's `type` for an HTTP status."""
    if status >= 500:
        return "server_error"
    return _KINDS.get(status, "invalid_request_error")


def error_body(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """`{"error": {...}}` as OpenAI's API writes it."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (unknown path, wrong method) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    path, method = request.url.path, request.method
    messages = {404: f"there is no endpoint {path}", 405: f"{path} does not take {method}"}
    message = messages.get(exc.status_code, exc.detail)
    return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()


async def api_error(request: Request, exc: Exception) -> Response:
    """An `ApiError` raised anywhere in a handler."""
    assert isinstance(exc, ApiError)
    return exc.response()


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug: 500, logged with its traceback."""
    log.exception("error in %s %s", request.method, request.url.path)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}").response()
