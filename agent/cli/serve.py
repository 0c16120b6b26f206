"""`agent serve`: an OpenAI-compatible server over the local model."""

from __future__ import annotations

import logging
import threading

import click

from agent.cli.common import EXIT_OK, setup_logging
from agent.config import load_settings

log = logging.getLogger("agent")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--model", help="hub id or local directory (default: the settings')")
@click.option("--served-model-name", metavar="NAME", help="the model's name for clients")
@click.option("--api-key", envvar="AGENT_SERVE_API_KEY", help="require this key (Bearer)")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the model")
@click.option("--lookup-decoding/--no-lookup-decoding", default=None,
              help="draft tokens from the context and verify them in one pass (default: the "
                   "settings', on)")  # fmt: skip
@click.option("--queue-limit", type=click.IntRange(min=1), default=16, show_default=True,
              help="requests that may wait; more are answered 503")  # fmt: skip
@click.option("--allowed-origins", metavar="ORIGIN,...", default="",
              help="browser origins that may call the server (CORS), e.g. http://localhost:3000; "
                   "none by default")  # fmt: skip
@click.option("--debug", is_flag=True, help="verbose logs on stderr")
def serve(host: str, port: int, model: str | None, served_model_name: str | None,
          api_key: str | None, threads: int | None, lookup_decoding: bool | None,
          queue_limit: int, allowed_origins: str, debug: bool) -> int:  # fmt: skip
    """Serve the model at http://HOST:PORT/v1 (chat and text completions, models, /tokenize,
    /detokenize, /health, /metrics); the model loads in the background (/health says 503
    until it is ready)."""
    import uvicorn

    from agent.server.app import create_app
    from agent.server.generation import ModelService
    from agent.server.guard import Access

    setup_logging(debug)
    settings = load_settings({"model": model, "lookup_decoding": lookup_decoding})
    service = ModelService(
        settings.model,
        queue_limit=queue_limit,
        threads=threads or settings.threads,
        served_name=served_model_name,
        lookup=settings.lookup_decoding,
    )
    threading.Thread(target=service.load, daemon=True, name="model-load").start()
    log.info("serving %s on http://%s:%d/v1 (loading the model)", settings.model, host, port)
    origins = tuple(origin.strip() for origin in allowed_origins.split(",") if origin.strip())
    app = create_app(service, api_key=api_key, access=Access(host, port, origins))
    uvicorn.run(app, host=host, port=port, log_level="debug" if debug else "warning")
    return EXIT_OK
