"""The page's routes: chat (on `ChatRoom`), the run history and the scheduled jobs, as
server-rendered pages (Jinja2, autoescaped) with a little JavaScript of our own; every asset
ships in the package (agent/ui/static), nothing comes from another origin."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp

from agent import __version__
from agent.config import Settings
from agent.errors import ConfigError
from agent.history.store import History, UnknownRunError
from agent.history.views import export_json, export_markdown
from agent.ui.chat_room import APPROVAL_ANSWERS, Chat, ChatRoom, past_items
from agent.ui.guard import Guard, csrf_value
from agent.ui.jobs_view import job_views
from agent.ui.markdown import render_markdown
from agent.ui.timeline import build_timeline

HERE = Path(__file__).parent
RUNS_SHOWN = 50
STATUSES = ("answered", "no_answer", "error", "cancelled", "timed_out", "interrupted", "running")


class JobStarter:
    """`agent schedule run-now NAME` in a process of its own (as a user's command would run
    it); those still running when the page stops are stopped with it."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> None:
        self.running = [process for process in self.running if process.poll() is None]
        command = [sys.executable, "-m", "agent", "schedule", "run-now", name]
        self.running.append(
            subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        )

    def stop(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.terminate()
        for process in self.running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=15)


def build_app(settings: Settings, token: str, hosts: set[str], room: ChatRoom) -> ASGIApp:
    """The page's ASGI app, behind its `Guard`; its chats in `room` (closed when the app
    stops)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = lambda moment: (
        datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "—"
    )
    templates.env.filters["markdown"] = render_markdown
    jobs = JobStarter()
    csrf = csrf_value(token)

    def history() -> History:
        """The run history, opened for one request (a connection belongs to its thread)."""
        return History(settings.history)

    def page(request: Request, name: str, **context: Any) -> Response:
        return templates.TemplateResponse(
            request,
            name,
            {"csrf": csrf, "version": __version__, "model": settings.model, **context},
        )

    def chat_of(request: Request) -> Chat:
        chat = room.chats.get(request.path_params["chat"])
        if chat is None:
            raise HTTPException(404, "no such chat (the page was opened by an earlier agent ui)")
        return chat

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise HTTPException(400, "the body must be JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return data

    def chat_page(request: Request) -> Response:
        return page(
            request,
            "chat.html",
            resume=request.query_params.get("resume", ""),
            tools=room.tool_names,
            approve=settings.approve,
        )

    async def new_chat(request: Request) -> Response:
        resume = str((await body(request)).get("resume") or "")
        items: list[dict[str, Any]] = []
        conversation, messages = None, None
        if resume:

            def load() -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
                with history() as opened:
                    found = opened.conversation_of(resume)
                    return found, opened.messages(found), past_items(opened, found)

            try:
                conversation, messages, items = await run_in_threadpool(load)
            except UnknownRunError as exc:
                raise HTTPException(404, str(exc)) from None
        chat = room.new_chat(conversation, messages)
        return JSONResponse({"id": chat.id, "items": items, "conversation": conversation})

    async def turn(request: Request) -> Response:
        chat = chat_of(request)
        text = str((await body(request)).get("text") or "").strip()
        if not text:
            raise HTTPException(400, "nothing to send")
        if chat.feed is not None and not chat.feed.finished.is_set():
            raise HTTPException(409, "this chat is still answering; stop it first")
        feed = room.start_turn(chat, text)

        async def lines() -> AsyncIterator[str]:
            try:
                while True:
                    item = await run_in_threadpool(feed.next)
                    if item is None:
                        return
                    yield json.dumps(item, ensure_ascii=False) + "\n"
            finally:  # the page went away: its answer is stopped
                if not feed.finished.is_set():
                    feed.stop.set()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def stop(request: Request) -> Response:
        room.stop(chat_of(request))
        return JSONResponse({"stopped": True})

    async def approval(request: Request) -> Response:
        answer = str((await body(request)).get("answer"))
        if answer not in APPROVAL_ANSWERS:
            raise HTTPException(400, "answer y, n or a")
        room.answer(chat_of(request), answer)
        return JSONResponse({"answer": answer})

    def runs_page(request: Request) -> Response:
        search = request.query_params.get("q", "").strip()
        status = request.query_params.get("status", "")
        with history() as opened:
            found = opened.runs(
                limit=RUNS_SHOWN,
                search=search or None,
                status=status if status in STATUSES else None,
            )
        return page(request, "runs.html", runs=found, q=search, status=status, statuses=STATUSES)

    def run_page(request: Request) -> Response:
        with history() as opened:
            try:
                run = opened.run(request.path_params["run"])
            except UnknownRunError as exc:
                raise HTTPException(404, str(exc)) from None
            timeline = build_timeline(opened.timed_events(run.id))
            turns = opened.conversation_runs(run.conversation_id)
            kind = opened.conversation_kind(run.conversation_id)
        return page(request, "run.html", run=run, timeline=timeline, turns=turns, kind=kind)

    def export(request: Request) -> Response:
        fmt = request.query_params.get("format", "markdown")
        if fmt not in ("markdown", "json"):
            raise HTTPException(400, "format: markdown or json")
        whole = request.query_params.get("conversation") == "1"
        with history() as opened:
            try:
                run = opened.run(request.path_params["run"])
            except UnknownRunError as exc:
                raise HTTPException(404, str(exc)) from None
            chosen = opened.conversation_runs(run.conversation_id) if whole else [run]
            text = (export_markdown if fmt == "markdown" else export_json)(opened, chosen)
        name = f"{run.conversation_id if whole else run.id}.{'md' if fmt == 'markdown' else 'json'}"
        return Response(
            text,
            media_type="text/markdown" if fmt == "markdown" else "application/json",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    def jobs_page(request: Request) -> Response:
        from agent.scheduler.ledger import Ledger

        with history() as opened:
            views = job_views(Ledger(opened))
        return page(request, "jobs.html", jobs=views)

    async def run_job(request: Request) -> Response:
        from agent.scheduler.ledger import Ledger

        name = request.path_params["name"]

        def check() -> None:
            with history() as opened:
                Ledger(opened).job(name)

        try:
            await run_in_threadpool(check)
        except ConfigError as exc:
            raise HTTPException(404, str(exc)) from None
        jobs.start(name)
        return JSONResponse({"started": name})

    async def error_page(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return page(request, "error.html", status=exc.status_code, message=exc.detail)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(jobs.stop)
        await run_in_threadpool(room.close)

    routes = [
        Route("/", lambda request: RedirectResponse("/chat", status_code=303)),
        Route("/chat", chat_page),
        Route("/runs", runs_page),
        Route("/runs/{run}", run_page),
        Route("/runs/{run}/export", export),
        Route("/jobs", jobs_page),
        Route("/api/chats", new_chat, methods=["POST"]),
        Route("/api/chats/{chat}/turns", turn, methods=["POST"]),
        Route("/api/chats/{chat}/stop", stop, methods=["POST"]),
        Route("/api/chats/{chat}/approval", approval, methods=["POST"]),
        Route("/api/jobs/{name}/run", run_job, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: error_page}
    )
    return Guard(app, token, hosts)
