"""Screenshots of `agent ui`'s three pages for the README: `python docs/screenshots.py`.

It runs the real page on the trained tiny test model (built on first use in the agent's cache,
as the tests build it) with a scratch AGENT_HOME: one chat turn that calls the time server, a
scheduled job run twice, then Chromium (Debian's, through Playwright) photographs the chat,
that run's page, and the jobs page into docs/ui-chat.png, docs/ui-run.png, docs/ui-jobs.png.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from agent.testing.tiny_model import TRAINED_GPTQ_SUBDIR, cached_tiny_checkpoint

HERE = Path(__file__).resolve().parent
SIZE = {"width": 1100, "height": 760}


def agent(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "agent", *args], env=env, check=True, capture_output=True)


def shoot(page: Page, url: str, out: Path, full_page: bool = False) -> None:
    page.goto(url)
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(out), full_page=full_page)
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="directory for the PNG files")
    args = parser.parse_args()
    model = str(cached_tiny_checkpoint() / TRAINED_GPTQ_SUBDIR)
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        print("error: needs Chromium (apt-get install chromium)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "AGENT_HOME": home, "AGENT_SERVICE": "off"}
        common = ["--model", model, "--seed", "1"]
        agent(
            "schedule", "add", "tokyo-time", "What time is it in Tokyo?", "--every", "1h",
            "--no-check", *common, env=env,
        )  # fmt: skip
        for _ in range(2):
            agent("schedule", "run-now", "tokyo-time", env=env)
        ui = subprocess.Popen(
            [sys.executable, "-m", "agent", "ui", "--no-open", "--port", "0", *common],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert ui.stdout is not None
        url = ui.stdout.readline().strip()
        base = url.split("/?")[0]
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=browser_path)
                page = browser.new_page(viewport=SIZE)
                page.goto(url)
                page.fill("#message", "What time is it in Tokyo?")
                page.press("#message", "Enter")
                page.wait_for_selector(".run-end", timeout=120_000)
                page.locator("header.top").scroll_into_view_if_needed()
                page.screenshot(path=str(args.out / "ui-chat.png"))
                print(f"wrote {args.out / 'ui-chat.png'}")
                page.goto(f"{base}/runs?q=is_dst")
                page.click("tr.run-row a")
                shoot(page, page.url, args.out / "ui-run.png", full_page=True)
                shoot(page, f"{base}/jobs", args.out / "ui-jobs.png")
                browser.close()
        finally:
            ui.send_signal(signal.SIGINT)
            ui.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
