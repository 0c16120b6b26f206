"""The scheduler's rules on a real SQLite ledger, with a controllable clock: fire times across
clock changes, the overlap and missed-run policies, coalescing, claims racing between real
processes, recovery of a dead claimant, and the outcome a run's events give."""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from agent.errors import ConfigError
from agent.events import Answer, Error, Notice, RunFinished, RunStarted, ToolCall, ToolResult
from agent.history.store import History
from agent.scheduler.daemon import LATE_S, plan, tick
from agent.scheduler.jobs import JobOptions
from agent.scheduler.ledger import Ledger
from agent.scheduler.outcome import outcome_of
from agent.scheduler.run_now import resolve_occurrence
from agent.scheduler.timing import dst_notes, parse_duration, parse_trigger, utc_stamp

HOUR = 3600.0


def fire_times(spec: str, tz: str, after: str, count: int) -> list[str]:
    trigger = parse_trigger(spec, None, None, tz)
    start = datetime.fromisoformat(after).replace(tzinfo=ZoneInfo(tz)).timestamp()
    times = trigger.times_after(start)
    return [utc_stamp(next(times)) for _ in range(count)]


# --- fire times across clock changes ----------------------------------------------------------


def test_berlin_spring_forward_runs_the_skipped_time_when_the_hour_ends() -> None:
    # 2027-03-28: 02:00 CET becomes 03:00 CEST. The 02:30 run happens at 03:00 CEST (01:00Z).
    assert fire_times("30 2 * * *", "Europe/Berlin", "2027-03-27 12:00", 3) == [
        "2027-03-28T01:00:00Z",
        "2027-03-29T00:30:00Z",
        "2027-03-30T00:30:00Z",
    ]


def test_berlin_fall_back_runs_a_fixed_time_once_and_hourly_jobs_in_both_passes() -> None:
    # 2027-10-31: 03:00 CEST becomes 02:00 CET; 02:30 happens twice.
    assert fire_times("30 2 * * *", "Europe/Berlin", "2027-10-30 12:00", 2) == [
        "2027-10-31T00:30:00Z",
        "2027-11-01T01:30:00Z",
    ]
    hourly = fire_times("30 * * * *", "Europe/Berlin", "2027-10-31 02:00", 3)
    assert hourly == ["2027-10-31T00:30:00Z", "2027-10-31T01:30:00Z", "2027-10-31T02:30:00Z"]


def test_new_york_changes_and_weekday_jobs_keep_their_wall_time() -> None:
    # 2027-03-14 02:00 EST -> 03:00 EDT; 2027-11-07 02:00 EDT -> 01:00 EST.
    assert fire_times("30 2 * * *", "America/New_York", "2027-03-13 12:00", 2) == [
        "2027-03-14T07:00:00Z",  # 03:00 EDT
        "2027-03-15T06:30:00Z",
    ]
    assert fire_times("30 1 * * *", "America/New_York", "2027-11-06 12:00", 2) == [
        "2027-11-07T05:30:00Z",  # the first 01:30 (EDT) only
        "2027-11-08T06:30:00Z",
    ]
    # 08:00 on weekdays stays 08:00 local on both sides of the change.
    assert fire_times("0 8 * * 1-5", "America/New_York", "2027-03-12 09:00", 2) == [
        "2027-03-15T12:00:00Z",
        "2027-03-16T12:00:00Z",
    ]


def test_dst_notes_say_what_happens_to_the_runs_that_fall_in_a_change() -> None:
    trigger = parse_trigger("30 2 * * *", None, None, "Europe/Berlin")
    start = datetime(2027, 3, 1, tzinfo=ZoneInfo("UTC")).timestamp()
    notes = dst_notes(trigger, start, start + 300 * 86400)
    assert notes[0] == (
        "2027-03-28: 02:00-03:00 does not exist (clocks go forward); the run asked for 02:30 "
        "happens at 2027-03-28 03:00 CEST (+02:00)"
    )
    assert notes[1] == (
        "2027-10-31: 02:00-03:00 happens twice (clocks go back); the run asked for 02:30 runs "
        "once, at 2027-10-31 02:30 CEST (+02:00)"
    )
    hourly = parse_trigger("30 * * * *", None, None, "America/New_York")
    both = dst_notes(hourly, start, start + 300 * 86400)
    assert "02:30 is skipped" in both[0]
    assert "runs in both passes, at 2027-11-07 01:30 EDT (-04:00), 2027-11-07 01:30 EST" in both[1]
    # A morning job is untouched by a change at 02:00: nothing to say.
    assert (
        dst_notes(parse_trigger("0 8 * * *", None, None, "Europe/Berlin"), start, start + 3e7) == []
    )


def test_every_counts_real_time_from_the_epoch() -> None:
    trigger = parse_trigger(None, "30m", None, "Europe/Berlin")
    start = datetime(2027, 3, 28, 0, 50, tzinfo=ZoneInfo("UTC")).timestamp()
    times = trigger.times_after(start)
    assert [utc_stamp(next(times)) for _ in range(3)] == [
        "2027-03-28T01:00:00Z",
        "2027-03-28T01:30:00Z",
        "2027-03-28T02:00:00Z",
    ]
    assert parse_duration("1h30m") == 5400
    for bad in ("soon", "0m", "5 parsecs"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def test_occurrence_must_be_a_fire_time_that_is_due() -> None:
    every = parse_trigger(None, "1h", None, "UTC")
    job = _job_object(every)
    now = time.time()
    assert resolve_occurrence(job, "latest", now) == (now // HOUR) * HOUR
    with pytest.raises(ConfigError, match="not a fire time"):
        resolve_occurrence(job, utc_stamp((now // HOUR) * HOUR - 60), now)
    with pytest.raises(ConfigError, match="in the future"):
        resolve_occurrence(job, utc_stamp((now // HOUR + 2) * HOUR), now)


# --- the ledger and the policies ---------------------------------------------------------------


def _job_object(trigger, **options):  # type: ignore[no-untyped-def]
    from agent.scheduler.jobs import Job

    return Job(id=0, name="j", task="t", trigger=trigger, options=JobOptions(**options))


@pytest.fixture
def ledger(tmp_path: Path):  # type: ignore[no-untyped-def]
    with History(tmp_path / "history.sqlite3") as history:
        yield Ledger(history)


def _add(ledger: Ledger, every: str, since: float, **options):  # type: ignore[no-untyped-def]
    """A job `j` every `every`, whose slots count from `since` (the controllable clock's past)."""
    job = ledger.add_job(
        "j", "task", parse_trigger(None, every, None, "UTC"), JobOptions(**options)
    )
    ledger.db.execute("UPDATE jobs SET checked_until = ? WHERE id = ?", (since, job.id))
    return job


def _statuses(ledger: Ledger, job) -> dict[float, str]:  # type: ignore[no-untyped-def]
    return {o.scheduled_at: o.status for o in ledger.occurrences(job, 1000)}


def test_overlap_skip_records_skipped_while_the_previous_run_runs(ledger: Ledger) -> None:
    now = (time.time() // 60) * 60
    job = _add(ledger, "1m", now - 61)
    assert tick(ledger, now) == [(job, now)]
    assert ledger.start(job, now)
    assert tick(ledger, now + 60) == []
    occurrence = ledger.occurrence(job, now + 60)
    assert occurrence is not None and occurrence.status == "skipped"
    assert occurrence.reason == "the previous run was still running (overlap: skip)"
    ledger.finish(job, now, "succeeded", None, None)
    assert tick(ledger, now + 120) == [(job, now + 120)]


def test_overlap_queue_keeps_one_run_waiting_and_skips_the_rest(ledger: Ledger) -> None:
    now = (time.time() // 60) * 60
    job = _add(ledger, "1m", now - 61, overlap="queue")
    tick(ledger, now)
    assert ledger.start(job, now)
    assert tick(ledger, now + 60) == [(job, now + 60)]  # queued behind the running one
    assert not ledger.start(job, now + 60)  # it may not start while the first runs
    assert tick(ledger, now + 120) == []
    assert _statuses(ledger, job)[now + 120] == "skipped"
    ledger.finish(job, now, "succeeded", None, None)
    assert ledger.start(job, now + 60)


def test_missed_run_once_runs_the_latest_slot_and_records_the_rest(ledger: Ledger) -> None:
    now = (time.time() // HOUR) * HOUR + 600  # ten minutes past the hour: every slot is late
    job = _add(ledger, "1h", now - 5 * HOUR)
    assert tick(ledger, now) == [(job, now - 600)]
    statuses = _statuses(ledger, job)
    assert len(statuses) == 5
    assert sorted(statuses.values()) == ["missed"] * 4 + ["queued"]
    reason = ledger.occurrence(job, now - 600 - HOUR).reason  # type: ignore[union-attr]
    assert reason is not None and reason.startswith("coalesced into the run of")
    assert tick(ledger, now + 1) == []  # the backlog ran once; nothing runs twice


def test_missed_run_once_beyond_the_grace_period_runs_nothing(ledger: Ledger) -> None:
    now = (time.time() // HOUR) * HOUR + 1200
    job = _add(ledger, "1h", now - 3 * HOUR, grace_s=600.0)
    assert tick(ledger, now) == []
    assert set(_statuses(ledger, job).values()) == {"missed"}
    assert "past the grace period" in (ledger.occurrences(job, 1)[0].reason or "")


def test_missed_skip_records_every_late_slot_and_runs_the_on_time_one(ledger: Ledger) -> None:
    now = (time.time() // HOUR) * HOUR + 10  # the slot of this hour is 10 s old: on time
    job = _add(ledger, "1h", now - 3 * HOUR, missed="skip")
    assert tick(ledger, now) == [(job, now - 10)]
    statuses = _statuses(ledger, job)
    assert [statuses[t] for t in sorted(statuses)] == ["missed", "missed", "queued"]
    late = _job_object(parse_trigger(None, "1h", None, "UTC"), missed="skip")
    assert plan(late, [now - 10 - HOUR], now).run is None  # late and skip: nothing runs


def test_paused_jobs_do_not_run_and_do_not_make_up_the_pause(ledger: Ledger) -> None:
    now = (time.time() // 60) * 60
    job = _add(ledger, "1m", now - 61)
    ledger.set_paused(job, True)
    assert tick(ledger, now + 300) == []
    ledger.set_paused(job, False)
    assert tick(ledger, now + 300) == []  # resumed after those slots: none is made up
    assert _statuses(ledger, job) == {}


def _claim_in_a_process(path: str, at: float, results: Any) -> None:
    with History(Path(path)) as history:
        ledger = Ledger(history)
        results.put(ledger.claim(ledger.job("j"), at, "outside"))


@pytest.mark.slow
def test_claims_racing_from_several_processes_give_the_slot_to_exactly_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.sqlite3"
    with History(path) as history:
        _add(Ledger(history), "1m", time.time())
    at = (time.time() // 60) * 60
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    racers = [
        context.Process(target=_claim_in_a_process, args=(str(path), at, results)) for _ in range(6)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
    outcomes = sorted(results.get(timeout=5) for _ in racers)
    assert outcomes == ["queued"] + ["taken"] * 5


def test_a_claim_whose_process_died_is_recovered(ledger: Ledger) -> None:
    now = (time.time() // 60) * 60
    job = _add(ledger, "1m", now - 200)
    ledger.claim(job, now - 120, "schedule")
    ledger.start(job, now - 120)
    ledger.claim(replace(job, options=JobOptions(overlap="queue")), now - 60, "schedule")
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    ledger.db.execute("UPDATE occurrences SET pid = ?", (dead.pid,))
    ledger.recover()
    statuses = _statuses(ledger, job)
    assert statuses == {now - 120: "interrupted", now - 60: "missed"}
    interrupted = ledger.occurrence(job, now - 120)
    assert interrupted is not None and "stopped before it ended" in (interrupted.reason or "")
    # A claim that stopped sending heartbeats is taken for dead too.
    ledger.claim(job, now, "schedule")
    ledger.db.execute("UPDATE occurrences SET heartbeat_at = 0 WHERE scheduled_at = ?", (now,))
    ledger.recover()
    assert _statuses(ledger, job)[now] == "missed"


def test_late_slots_are_late_by_more_than_a_minute() -> None:
    job = _job_object(parse_trigger(None, "1m", None, "UTC"), missed="skip")
    assert plan(job, [1000.0], 1000.0 + LATE_S).run == 1000.0
    assert plan(job, [1000.0], 1000.0 + LATE_S + 1).run is None


# --- outcomes ----------------------------------------------------------------------------------


def _run(*middle) -> list:  # type: ignore[no-untyped-def]
    started = RunStarted(prompt="p", model="m", backend="local", thinking=False, tools=[])
    return [started, *middle]


def test_outcomes_come_from_the_run_s_own_events() -> None:
    done = RunFinished(status="answered", usage={}, timings={})
    call = ToolCall(call_id="1", name="fetch-fetch", arguments={})
    bad = ToolResult(
        call_id="1", name="fetch-fetch", content="Error: 404", ok=False, duration_s=0.1
    )
    good = ToolResult(call_id="2", name="fetch-fetch", content="page", ok=True, duration_s=0.1)
    assert outcome_of(_run(Answer(text="hi"), done)).status == "succeeded"
    stuck = outcome_of(_run(call, bad, Answer(text="Sorry, I could not."), done))
    assert (stuck.status, stuck.reason) == ("failed", "tool fetch-fetch failed: Error: 404")
    assert outcome_of(_run(call, bad, call, good, Answer(text="ok"), done)).status == "succeeded"
    no_answer = RunFinished(status="no_answer", usage={}, timings={})
    assert outcome_of(_run(Notice(kind="no_answer", message="x"), no_answer)).reason == "no answer"
    down = Error(message="cannot reach 127.0.0.1:9", where="model")
    error = outcome_of(_run(down, RunFinished("error", {}, {})))
    assert (error.status, error.reason) == (
        "failed",
        "model server down or failing: " + down.message,
    )
    timed = _run(
        Notice(kind="time_limit", message="stopped at 5 s"), RunFinished("timed_out", {}, {})
    )
    assert outcome_of(timed).status == "timed_out"
    assert outcome_of(_run(Answer(text="par"))).status == "interrupted"  # it never finished
