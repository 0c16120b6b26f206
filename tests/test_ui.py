"""`agent ui` on real parts: the real command serving on 127.0.0.1, a real headless Chromium
(Debian's, through Playwright), the trained tiny model with the real MCP time server, a real
SQLite history, real scheduled jobs. The model server of the hostile-content test is the
StubOpenAIServer TEST DOUBLE (it scripts a model that quotes a hostile tool result)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from agent.history.store import History
from tests.clirun import agent_argv, agent_cli, agent_env, empty_mcp_config
from tests.stub_openai_server import StubOpenAIServer

HOSTILE = (
    "<script>alert('script')</script> <img src=x onerror=alert('img')> "
    "[click me](javascript:alert('link')) <iframe src=\"http://198.51.100.7/\"></iframe> "
    "![pixel](http://198.51.100.7/pixel.png)"
)
HOSTILE_TOOL = f'''
from agent.plugins import tool


@tool
def hostile(topic: str) -> str:
    """Return what a web page said.

    Args:
        topic: anything
    """
    return {HOSTILE!r}
'''


class UiServer:
    """`agent ui --no-open --port 0 ARGS` with its own AGENT_HOME; stopped as Ctrl-C does."""

    def __init__(self, home: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.process = subprocess.Popen(
            agent_argv("ui", "--no-open", "--port", "0", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=agent_env(home, env),
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()  # printed once it listens
        assert self.url.startswith("http://127.0.0.1:"), self.process.stderr.read()  # type: ignore[union-attr]
        self.base = self.url.split("/?")[0]
        self.token = self.url.split("token=")[1]

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; its exit code and stderr. No process it started is left (but the
        resident service, which is meant to outlive it)."""
        try:
            children = self._started()
        finally:
            self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()  # never left running by a failed test
            raise
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left behind: {alive}"
        return self.process.returncode, err

    def _started(self) -> list[psutil.Process]:
        """The processes it started, but a resident service and what that started."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        services = [child for child in children if _command_line(child)[-2:] == _SERVICE]
        kept = set()
        for service in services:
            kept.add(service.pid)
            with contextlib.suppress(psutil.Error):
                kept.update(child.pid for child in service.children(recursive=True))
        return [child for child in children if child.pid not in kept]


_SERVICE = ["-m", "agent.service"]


def _command_line(process: psutil.Process) -> list[str]:
    """Its command line; none for one that has ended (a zombie's cannot be read)."""
    try:
        return list(process.cmdline())
    except psutil.Error:
        return []


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from the system's packages (Playwright's own download is not
    reachable here)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "the page's tests need a Chromium: apt-get install chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True)
    opened = context.new_page()
    yield opened
    context.close()


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def finish_turn(page: Page, nth: int = 0) -> None:
    """Wait for the `nth` turn's end (from 0), allowing each tool call it asks about."""
    while True:
        page.wait_for_function(
            "n => document.querySelectorAll('.run-end').length > n"
            " || document.querySelector('.approval:not(.answered)')",
            arg=nth,
            timeout=60_000,
        )
        if page.locator(".run-end").count() > nth:
            return
        page.click(".approval:not(.answered) button[data-answer='y']")


def watch(page: Page) -> dict[str, list[Any]]:
    """Every request the page makes and every dialog it opens (none is accepted)."""
    seen: dict[str, list[Any]] = {"requests": [], "dialogs": []}
    page.on("request", lambda request: seen["requests"].append(request.url))

    def dialog(opened: Any) -> None:
        seen["dialogs"].append(opened.message)
        opened.dismiss()

    page.on("dialog", dialog)
    return seen


# --- who may use the page ------------------------------------------------------------------


@pytest.fixture(scope="module")
def idle_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiServer]:
    """A page whose chat is never used (no model is loaded)."""
    home = tmp_path_factory.mktemp("ui-home")
    server = UiServer(home, "--model", str(home / "no-model"))
    yield server
    assert server.stop()[0] == 0


def test_without_the_token_every_request_is_refused(idle_ui: UiServer) -> None:
    for path in ("/", "/chat", "/runs", "/jobs", "/static/chat.js", "/runs/r-1/export"):
        reply = httpx.get(idle_ui.base + path)
        assert reply.status_code == 403, path
    assert httpx.get(idle_ui.base + "/chat?token=wrong").status_code == 403
    assert httpx.post(idle_ui.base + "/api/chats", json={}).status_code == 403


def test_the_token_becomes_a_cookie_and_pages_carry_a_strict_policy(idle_ui: UiServer) -> None:
    with httpx.Client(base_url=idle_ui.base) as client:
        first = client.get(f"/runs?token={idle_ui.token}")
        assert first.status_code == 303 and first.headers["location"] == "/runs"
        assert "HttpOnly" in first.headers["set-cookie"]
        assert "SameSite=strict" in first.headers["set-cookie"]
        page = client.get("/runs")
        assert page.status_code == 200 and "No runs yet" in page.text
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "unsafe-inline" not in policy
        assert page.headers["x-frame-options"] == "DENY"


def test_a_foreign_host_or_origin_and_a_change_without_the_page_header_are_refused(
    idle_ui: UiServer,
) -> None:
    auth = {"authorization": f"Bearer {idle_ui.token}"}
    with httpx.Client(base_url=idle_ui.base, headers=auth) as client:
        assert client.get("/runs").status_code == 200
        # DNS rebinding: the token alone does not make another name this page.
        assert client.get("/runs", headers={"host": "evil.example:80"}).status_code == 403
        evil = {"origin": "http://evil.example"}
        assert client.get("/runs", headers=evil).status_code == 403
        # A change needs the CSRF header only the page's own script can read.
        assert client.post("/api/chats", json={}).status_code == 403
        csrf = client.get("/chat").text.split('name="csrf" content="')[1].split('"')[0]
        made = client.post("/api/chats", json={}, headers={"x-agent-csrf": csrf})
        assert made.status_code == 200 and made.json()["items"] == []
        refused = client.post("/api/chats", json={}, headers={"x-agent-csrf": csrf, **evil})
        assert refused.status_code == 403


def test_a_port_in_use_or_a_foreign_host_is_one_line_and_exit_2(
    idle_ui: UiServer, tmp_path: Path
) -> None:
    port = idle_ui.base.rsplit(":", 1)[1]
    done = agent_cli("ui", "--no-open", "--port", port, home=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; pick another --port"
    ]
    done = agent_cli("ui", "--no-open", "--host", "no-such-host.invalid", home=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("error: --host no-such-host.invalid: ")


# --- the chat, the runs, the jobs, in a real browser ---------------------------------------


@pytest.mark.slow
def test_chat_asks_shows_the_tool_card_and_the_answer_then_the_runs_page_finds_it(
    tiny_trained_gptq: Path, tmp_path: Path, page: Page
) -> None:
    ui = UiServer(tmp_path, "--model", str(tiny_trained_gptq), "--seed", "1", "--approve", "all")
    try:
        seen = watch(page)
        page.goto(ui.url)
        send(page, "What time is it in Tokyo?")
        page.wait_for_selector(".approval", timeout=60_000)
        assert "time-get_current_time" in page.inner_text(".approval")
        finish_turn(page)
        card = page.locator("details.tool")
        assert card.locator(".tool-name").inner_text() == "time-get_current_time"
        result = json.loads(card.locator("pre.result").inner_text())
        assert result["timezone"] == "Asia/Tokyo"
        answer = page.locator(".assistant").last.inner_text()
        assert answer == f"The time in Tokyo is {result['datetime']}."
        assert "time-get_current_time" in page.inner_text("#tools")
        assert page.locator(".run-end").inner_text().startswith("answered")

        # A word only the tool result says finds the run; another does not.
        page.goto(f"{ui.base}/runs?q=is_dst")
        assert page.locator("tr.run-row").count() == 1
        page.goto(f"{ui.base}/runs?q=Osaka")
        assert page.locator("tr.run-row").count() == 0
        page.goto(f"{ui.base}/runs?q=is_dst")
        page.click("tr.run-row a")
        assert page.locator("svg.waterfall rect.tool").count() == 1
        assert page.locator("svg.waterfall rect.model").count() == 2
        assert "Asia/Tokyo" in page.inner_text(".timeline")
        with page.expect_download() as download:
            page.click("text=Markdown")
        exported = Path(download.value.path()).read_text()
        assert "**Tool call** `time-get_current_time`" in exported

        # Continue it in the chat: the turn so far is shown, and the next turn joins it.
        page.click("text=Continue in chat")
        page.wait_for_selector(".user")
        assert page.locator(".user").first.inner_text() == "What time is it in Tokyo?"
        send(page, "And now?")
        finish_turn(page, 1)
        assert all(url.startswith(ui.base) for url in seen["requests"])
        assert not seen["dialogs"]
    finally:
        code, err = ui.stop()
    assert code == 0, err
    with History(tmp_path / "history.sqlite3") as history:
        (run,) = history.runs(limit=1)
        turns = history.conversation_runs(run.conversation_id)
    assert [turn.prompt for turn in turns] == ["What time is it in Tokyo?", "And now?"]


@pytest.mark.slow
def test_stop_ends_the_answer_and_keeps_what_was_shown(
    tiny_gptq: Path, tmp_path: Path, page: Page, service: dict[str, str]
) -> None:
    """The untrained tiny model writes until its token limit: Stop cuts it short (in the
    resident service too: the stop crosses its socket)."""
    ui = UiServer(
        tmp_path, "--model", str(tiny_gptq), "--no-tools", "--seed", "1",
        "--max-new-tokens", "6000", env=service,
    )  # fmt: skip
    try:
        page.goto(ui.url)
        send(page, "Tell me a long story.")
        page.wait_for_selector(".assistant", timeout=60_000)
        page.click("#stop")
        page.wait_for_selector(".run-end", timeout=60_000)
        assert page.locator(".run-end").inner_text().startswith("cancelled")
        assert "answer stopped by the user" in page.inner_text("#log")
        shown = page.locator(".assistant").inner_text()
        assert shown and page.locator("#send").is_enabled()
    finally:
        assert ui.stop()[0] == 0
    with History(tmp_path / "history.sqlite3") as history:
        (run,) = history.runs(limit=1)
        assert run.status == "cancelled" and run.completion_tokens < 6000


def test_a_hostile_tool_result_and_answer_stay_text(tmp_path: Path, page: Page) -> None:
    tool = tmp_path / "hostile.py"
    tool.write_text(HOSTILE_TOOL)
    call = json.dumps({"name": "hostile", "arguments": {"topic": "news"}})
    replies = [("", f"<tool_call>\n{call}\n</tool_call>"), ("", f"The page said: {HOSTILE}")]
    with StubOpenAIServer(replies) as model:
        ui = UiServer(
            tmp_path, "--model-server", model.url, "--mcp-config",
            str(empty_mcp_config(tmp_path)), "--tool", str(tool), "--tools", "hostile",
            "--approve", "none",
        )  # fmt: skip
        try:
            seen = watch(page)
            page.goto(ui.url)
            send(page, "What does the news say?")
            page.wait_for_selector(".run-end", timeout=60_000)
            run_id = History(tmp_path / "history.sqlite3").runs(limit=1)[0].id
            pages = {"chat": "#log", "run": ".timeline"}
            for name, where in pages.items():
                if name == "run":
                    page.goto(f"{ui.base}/runs/{run_id}")
                text = page.inner_text(where)
                assert "<script>alert('script')</script>" in text, name
                assert "<img src=x onerror=alert('img')>" in text, name
                assert "[click me](javascript:alert('link'))" in text, name
                assert '<iframe src="http://198.51.100.7/"></iframe>' in text, name
                found = page.locator(f"{where} script, {where} img, {where} iframe")
                assert found.count() == 0, name
                links = page.eval_on_selector_all(f"{where} a", "all => all.map(a => a.href)")
                assert not any(href.startswith("javascript:") for href in links), name
            page.wait_for_timeout(500)  # an onerror or a lazy request would have fired by now
            assert not seen["dialogs"]
            assert all(url.startswith(ui.base) for url in seen["requests"]), seen["requests"]
        finally:
            code, err = ui.stop()
        assert code == 0, err


@pytest.mark.slow
def test_a_jobs_outcome_strip_after_two_occurrences_and_run_now(
    tiny_trained_gptq: Path, tmp_path: Path, page: Page
) -> None:
    add = agent_cli(
        "schedule", "add", "tokyo", "What time is it in Tokyo?", "--every", "1h", "--no-check",
        "--model", str(tiny_trained_gptq), "--seed", "1", home=tmp_path,
    )  # fmt: skip
    assert add.returncode == 0, add.stderr
    for _ in range(2):
        done = agent_cli("schedule", "run-now", "tokyo", home=tmp_path)
        assert "tokyo: succeeded" in done.stdout, done.stderr
    ui = UiServer(tmp_path, "--model", str(tiny_trained_gptq))
    try:
        page.goto(f"{ui.base}/jobs?token={ui.token}")
        job = page.locator("section.job[data-job='tokyo']")
        assert "every 1h" in job.locator(".schedule").inner_text()
        assert job.locator(".next").inner_text().count("·") == 2  # three next fire times
        cells = job.locator(".strip .cell.ok")
        assert cells.count() == 2
        cells.first.click()
        assert page.locator(".run-head h1").inner_text() == "What time is it in Tokyo?"
        page.go_back()
        page.click("section.job[data-job='tokyo'] button.run-now")
        # The page reloads itself until the new occurrence has its colour.
        page.locator("section.job[data-job='tokyo'] .cell.ok >> nth=2").wait_for(timeout=120_000)
        assert page.locator("section.job[data-job='tokyo'] .cell").count() == 3
    finally:
        assert ui.stop()[0] == 0
