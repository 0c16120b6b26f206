"""`agent ui`: the browser page (chat, runs, jobs) on 127.0.0.1, behind a token."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import sys
import threading
import webbrowser
from typing import Any

import click

from agent.cli.common import EXIT_OK, setup_logging
from agent.cli.options import conversation_options, settings_from
from agent.errors import ConfigError

log = logging.getLogger("agent")


class PortTaken(ConfigError):
    """The port cannot be listened on (taken, or not ours to take)."""


DEFAULT_PORT = 8770
GRACE_S = 10  # how long Ctrl-C waits for the page's open requests before it closes them


@click.command("ui")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help=f"port to serve on [default: {DEFAULT_PORT}, else a free one]",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (the token is needed anyway)",
)
@click.option(
    "--open/--no-open",
    "open_browser",
    default=True,
    show_default=True,
    help="open the page in the browser",
)
@conversation_options
def ui(port: int | None, host: str, open_browser: bool, **flags: Any) -> int:
    """The page in your browser: chat with the agent, look through runs, watch the jobs.

    Prints the page's address with its token; Ctrl-C stops it."""
    import uvicorn

    from agent.server.guard import Access
    from agent.ui.app import build_app
    from agent.ui.chat_room import ChatRoom
    from agent.ui.guard import new_token

    settings = settings_from(flags)
    setup_logging(settings.debug)
    listener = _listen(host, port)
    bound = listener.getsockname()[1]
    token = new_token()
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown if host not in ('0.0.0.0', '::') else '127.0.0.1'}:{bound}/?token={token}"
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("note: listening on %s: whoever can reach it still needs the token", host)
    room = ChatRoom(settings)
    app = build_app(settings, token, Access(host, bound).hosts(), room)
    config = uvicorn.Config(
        app,
        log_level="debug" if settings.debug else "warning",
        timeout_graceful_shutdown=GRACE_S,
    )
    server = _page_server(config, room)
    click.echo(url)
    print(f"agent ui: {url} (Ctrl-C stops it)", file=sys.stderr)
    if open_browser:
        threading.Timer(0.5, lambda: webbrowser.open(url)).start()
    # uvicorn stops on Ctrl-C, then raises the signal again: stopping the page is no failure.
    with contextlib.closing(listener), contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[listener])
    return EXIT_OK


def _listen(host: str, port: int | None) -> socket.socket:
    """A listening socket on `host`: `port`; without one, the default port, else a free one."""
    if port is None:
        try:
            return _bound(host, DEFAULT_PORT)
        except PortTaken:
            port = 0
    return _bound(host, port)


def _bound(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port just freed is free
    try:
        listener.bind((host, port))
    except (socket.gaierror, OSError) as exc:
        listener.close()
        if not isinstance(exc, socket.gaierror) and exc.errno != errno.EADDRNOTAVAIL:
            raise PortTaken(
                f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port"
            ) from None
        raise ConfigError(
            f"--host {host}: {exc.strerror}; give an address of this machine"
        ) from None
    listener.listen(64)
    return listener


def _page_server(config: Any, room: Any) -> Any:
    """A uvicorn server that, on Ctrl-C, stops the chats' answers first: their streams end,
    so the open connections it waits for close at once."""
    import uvicorn

    class PageServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            room.stop_all()
            super().handle_exit(sig, frame)

    return PageServer(config)
