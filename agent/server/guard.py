"""Who may talk to the server: an ASGI middleware in front of every route.

Without an API key, the server trusts whoever reaches it, so it refuses what a web page in a
browser could send it: a `Host` that is not the served address (DNS rebinding: 400) and an
`Origin` not in `--allowed-origins` (403). Always: a POST body that is not `application/json`
is 415 (a page's form or `text/plain` fetch is never JSON), and the CORS headers (and the
answer to a preflight) are given to allowed origins only.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.server.errors import ApiError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"


@dataclass(frozen=True)
class Access:
    """The address the server is reached at, and the browser origins allowed."""

    host: str = "127.0.0.1"
    port: int = 8000
    allowed_origins: tuple[str, ...] = ()
    api_key: bool = False  # whether a key is required (then Host and Origin are not checked)

    def hosts(self) -> set[str]:
        """The `Host` header values accepted."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        names = {host, *LOOPBACK_NAMES}
        accepted = {f"{name}:{self.port}" for name in names}
        return accepted | names if self.port == 80 else accepted

    def origin_allowed(self, origin: str) -> bool:
        """Whether a page from `origin` may call the server."""
        return "*" in self.allowed_origins or origin in self.allowed_origins


class AccessGuard:
    """Refuses what `access` does not allow, and adds CORS headers for allowed origins."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access
        self._hosts = access.hosts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        allowed = origin is not None and self.access.origin_allowed(origin)
        cors = _cors_headers(origin) if allowed and origin else {}
        refusal = self._refusal(scope["method"], headers, origin, allowed)
        if refusal is not None:
            refusal.headers = {**(refusal.headers or {}), **cors}
            await refusal.response()(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and cors:
            await Response(status_code=204, headers=cors)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start" and cors:
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in cors.items()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _refusal(
        self, method: str, headers: Headers, origin: str | None, allowed: bool
    ) -> ApiError | None:
        if not self.access.api_key:
            host = headers.get("host", "")
            if host.lower() not in self._hosts:
                message = f"Host {host!r} is not this server's address"
                return ApiError(400, message + " (use --api-key to serve other names)")
            if origin is not None and not allowed:
                return ApiError(403, f"Origin {origin!r} is not allowed (see --allowed-origins)")
        if method == "OPTIONS" and origin is not None and not allowed:
            return ApiError(403, f"Origin {origin!r} is not allowed (see --allowed-origins)")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if method == "POST" and content_type != "application/json":
            return ApiError(415, "the body must be JSON, sent as Content-Type: application/json")
        return None


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": CORS_METHODS,
        "Access-Control-Allow-Headers": CORS_HEADERS,
        "Vary": "Origin",
    }
