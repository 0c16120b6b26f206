"""What the page shows, without a browser: untrusted Markdown made safe, a run's timeline and
waterfall from its stored events, the jobs' outcome strips (real SQLite history)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from agent.history.store import History
from agent.scheduler.jobs import JobOptions
from agent.scheduler.ledger import Ledger
from agent.scheduler.timing import parse_trigger
from agent.ui.jobs_view import job_views
from agent.ui.markdown import render_markdown
from agent.ui.timeline import build_timeline, pretty


@pytest.mark.parametrize(
    "hostile",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        '<iframe src="https://evil.example/"></iframe>',
        '<a href="https://x.example" onclick="alert(1)">x</a>',
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](data:text/html,<script>alert(1)</script>)",
        "[x](vbscript:msgbox)",
        "<javascript:alert(1)>",
        "![pixel](https://evil.example/pixel.png)",
    ],
)
def test_hostile_markdown_renders_as_text(hostile: str) -> None:
    tags = _tags(render_markdown(hostile))
    assert not {name for name, _ in tags} & {"script", "img", "iframe"}
    for _, attributes in tags:
        assert not [key for key in attributes if key.startswith("on")]
        href = attributes.get("href")
        assert href is None or href.startswith(("https://", "http://", "mailto:")), href


def _tags(html: str) -> list[tuple[str, dict[str, str]]]:
    """Every tag the browser would build from `html`, with its attributes."""
    found: list[tuple[str, dict[str, str]]] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, {key: value or "" for key, value in attrs}))

    Collector().feed(html)
    return found


def test_markdown_keeps_what_answers_use() -> None:
    html = render_markdown(
        "**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[docs](https://example.com)"
    )
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert "<table>" in html and "<td>2</td>" in html
    assert '<a href="https://example.com" rel="noopener noreferrer nofollow">docs</a>' in html


def test_pretty_indents_json_and_leaves_other_text() -> None:
    assert pretty('{"a": [1, 2]}') == '{\n  "a": [\n    1,\n    2\n  ]\n}'
    assert pretty({"timezone": "Asia/Tokyo"}) == '{\n  "timezone": "Asia/Tokyo"\n}'
    assert pretty("42") == "42" and pretty("not json") == "not json"


def _result(call_id: str, name: str, content: str, duration_s: float) -> dict[str, Any]:
    return {
        "type": "tool_result", "call_id": call_id, "name": name, "content": content, "ok": True,
        "duration_s": duration_s,
    }  # fmt: skip


def _finished(timings: dict[str, float]) -> dict[str, Any]:
    return {"type": "run_finished", "status": "answered", "usage": {}, "timings": timings}


def test_timeline_joins_deltas_pairs_calls_and_measures_the_waterfall() -> None:
    events = [
        (100.0, {"type": "run_started", "started_at": 100.0}),
        (100.5, {"type": "thinking", "delta": "Need the "}),
        (100.6, {"type": "thinking", "delta": "time."}),
        (101.0, {"type": "tool_call", "call_id": "c1", "name": "time-now", "arguments": {}}),
        (101.25, _result("c1", "time-now", '{"t": 1}', 0.25)),
        (101.5, {"type": "text", "delta": "It is "}),
        (101.75, {"type": "text", "delta": "one."}),
        (101.75, {"type": "answer", "text": "It is one."}),
        (102.0, _finished({"total_s": 2.0})),
    ]  # fmt: skip
    timeline = build_timeline(events)
    assert [b.kind for b in timeline.blocks] == ["thinking", "tool", "text"]  # answer streamed
    assert timeline.blocks[0].text == "Need the time."
    tool = timeline.blocks[1]
    assert (tool.name, tool.result, tool.ok, tool.duration_s) == (
        "time-now",
        '{\n  "t": 1\n}',
        True,
        0.25,
    )
    bars = [(bar.kind, bar.start_s, bar.duration_s) for bar in timeline.bars]
    assert bars == [("model", 0.0, 1.0), ("tool", 1.0, 0.25), ("model", 1.25, 0.75)]
    assert timeline.total_s == 2.0 and timeline.status == "answered"


def test_a_run_recorded_before_events_had_times_has_no_waterfall() -> None:
    events = [
        (None, {"type": "run_started", "started_at": 100.0}),
        (None, {"type": "answer", "text": "Hi."}),
        (None, _finished({})),
    ]
    timeline = build_timeline(events)
    assert timeline.bars == [] and [b.kind for b in timeline.blocks] == ["answer"]


def test_a_long_result_is_folded() -> None:
    many = "\n".join(f"line {n}" for n in range(100))
    events = [
        (1.0, {"type": "tool_call", "call_id": "c", "name": "ls", "arguments": {}}),
        (2.0, _result("c", "ls", many, 1.0)),
    ]  # fmt: skip
    (block,) = build_timeline(events).blocks
    assert block.folded and block.preview.splitlines()[-1] == "line 23"


def test_jobs_show_their_schedule_next_times_and_outcomes_oldest_first(tmp_path: Path) -> None:
    with History(tmp_path / "history.sqlite3") as history:
        ledger = Ledger(history)
        job = ledger.add_job(
            "daily", "Say hi.", parse_trigger("0 8 * * *", None, None, "UTC"), JobOptions()
        )
        for at, status in [(1000.0, "succeeded"), (2000.0, "failed"), (3000.0, "missed")]:
            ledger.record(job, at, status, f"why {status}", "schedule")
        (view,) = job_views(ledger, now=0.0)
    assert view.schedule.startswith("cron '0 8 * * *'")
    assert view.next_runs == [
        "1970-01-01 08:00 UTC (+00:00)",
        "1970-01-02 08:00 UTC (+00:00)",
        "1970-01-03 08:00 UTC (+00:00)",
    ]
    assert [(cell.status, cell.css) for cell in view.outcomes] == [
        ("succeeded", "ok"), ("failed", "failed"), ("missed", "missed"),
    ]  # fmt: skip
    assert view.outcomes[1].reason == "why failed"
