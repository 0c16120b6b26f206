"""Who may use the page: the holder of its token, from a page of its own origin.

- **Token**: `agent ui` prints (and opens) `http://127.0.0.1:PORT/?token=T`, as Jupyter does.
  That first request trades the token for a cookie (HttpOnly, SameSite=Strict) and is
  redirected to the same address without it; every later request needs the cookie (or
  `Authorization: Bearer T`). Anything else gets 403.
- **DNS rebinding**: a request whose `Host` is not one of the page's own names (127.0.0.1,
  localhost, [::1], or the host the user chose, with the port) gets 403, token or not.
- **Cross-site requests**: an `Origin` other than the page's own gets 403; a request that
  changes anything (not GET or HEAD) must also carry the page's CSRF value in a header, which
  only a script of the page itself can read (from its `<meta>`), so a cookie a cross-site
  page could ride on is not enough.
- **Headers**: a strict Content-Security-Policy on every reply (scripts, styles and requests
  only to the page's own origin, no inline script, no frames, no images from elsewhere), no
  referrer, no sniffing, no framing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSRF_HEADER = "x-agent-csrf"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
SAFE_METHODS = ("GET", "HEAD")


def new_token() -> str:
    """A fresh token for one `agent ui` (256 bits)."""
    return secrets.token_urlsafe(32)


def csrf_value(token: str) -> str:
    """The value state-changing requests carry in `X-Agent-CSRF` (derived from the token)."""
    return hmac.new(token.encode(), b"agent-ui csrf", hashlib.sha256).hexdigest()


class Guard:
    """ASGI middleware: the token, Host, Origin and CSRF checks, and the security headers."""

    def __init__(self, app: ASGIApp, token: str, hosts: Iterable[str]) -> None:
        self.app = app
        self.token = token
        self.csrf = csrf_value(token)
        self.hosts = set(hosts)
        self.cookie = "agent_ui_" + hashlib.sha256(token.encode()).hexdigest()[:8]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refusal, redirect = self._check(scope)
        if redirect is not None:
            await redirect(scope, receive, send_secured)
        elif refusal is not None:
            await PlainTextResponse(refusal + "\n", status_code=403)(scope, receive, send_secured)
        else:
            await self.app(scope, receive, send_secured)

    def _check(self, scope: Scope) -> tuple[str | None, RedirectResponse | None]:
        """Why the request is refused (None: it may go on), or the redirect that sets the
        cookie for a request that brought the token in its address."""
        headers = Headers(scope=scope)
        if headers.get("host", "").lower() not in self.hosts:
            return "forbidden: this page answers only to its own address (Host)", None
        origin = headers.get("origin")
        if origin is not None and origin.lower().removeprefix("http://") not in self.hosts:
            return "forbidden: a request from another site (Origin)", None
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if "token" in query and scope["method"] in SAFE_METHODS:
            if not self._matches(query.pop("token")):
                return "forbidden: wrong token; open the address `agent ui` printed", None
            return None, self._cookie_redirect(scope["path"], query)
        if not (self._cookie_ok(headers) or self._bearer_ok(headers)):
            return "forbidden: open the address with its token that `agent ui` printed", None
        if scope["method"] not in SAFE_METHODS and not hmac.compare_digest(
            headers.get(CSRF_HEADER, ""), self.csrf
        ):
            return "forbidden: a change needs the page's own request header (CSRF)", None
        return None, None

    def _matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _cookie_ok(self, headers: Headers) -> bool:
        jar = SimpleCookie()
        try:
            jar.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no cookie
            return False
        morsel = jar.get(self.cookie)
        return morsel is not None and self._matches(morsel.value)

    def _bearer_ok(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self._matches(given.strip())

    def _cookie_redirect(self, path: str, query: dict[str, str]) -> RedirectResponse:
        rest = f"?{urlencode(query)}" if query else ""
        response = RedirectResponse(path + rest, status_code=303)
        response.set_cookie(self.cookie, self.token, httponly=True, samesite="strict", path="/")
        return response
