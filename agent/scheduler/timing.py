"""When a job fires: `--cron` (with cronsim), `--every` and `--at`, in the job's time zone.

Times are UTC epoch seconds everywhere but in what a user reads. Clock changes are left to
the zone: cronsim follows Debian cron (a run in the skipped hour runs when the hour ends, a
fixed-time run in the repeated hour runs once, `*` hours run in both passes); `--every` counts
real time from the Unix epoch, so its slots are the same for every process that computes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from itertools import takewhile
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from agent.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)\s*([smhd])")
MAX_SCAN_DAYS = 400  # how far `dst_notes` looks for clock changes


def parse_duration(text: str, what: str = "duration") -> float:
    """`90s`, `30m`, `1h30m`, `2d`: seconds (above zero)."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(f"{what} {text!r}: write it as a number and a unit, e.g. 90s, 30m, 2h")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"{what} {text!r} must be above zero")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """Seconds as the shortest `1h30m` form."""
    rest, out = int(seconds), ""
    for unit in "dhms":
        count, rest = divmod(rest, _UNITS[unit])
        if count:
            out += f"{count}{unit}"
    return out or "0s"


def zone(name: str) -> tzinfo:
    """The IANA time zone `name` (`Europe/Berlin`), or a one-line error."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin or UTC"
        ) from None


def local_zone_name() -> str:
    """This machine's IANA zone name (`TZ`, then /etc/localtime), `UTC` when unknown."""
    import os
    from pathlib import Path

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        candidates.append(str(localtime.resolve()).split("zoneinfo/")[-1])
    for name in candidates:
        if name:
            try:
                ZoneInfo(name)
                return name
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return "UTC"


@dataclass(frozen=True)
class Trigger:
    """A job's schedule: `kind` is `cron`, `every` or `at`; `spec` the expression, seconds or
    ISO wall time; `tz` the IANA zone it is read in."""

    kind: str
    spec: str
    tz: str

    def describe(self) -> str:
        """In words, for `list` and `show`."""
        if self.kind == "cron":
            try:
                words = CronSim(self.spec, datetime.now(zone(self.tz))).explain()
            except (CronSimError, ValueError):
                words = ""
            return f"cron {self.spec!r}" + (f" ({words})" if words else "") + f", {self.tz}"
        if self.kind == "every":
            return f"every {format_duration(float(self.spec))}"
        return f"once at {self.spec}, {self.tz}"

    def times_after(self, after: float) -> Iterator[float]:
        """Fire times later than `after`, in order."""
        if self.kind == "every":
            step = float(self.spec)
            slot = (after // step + 1) * step
            while True:
                yield slot
                slot += step
        elif self.kind == "at":
            once = self.once()
            if once > after:
                yield once
        else:
            for moment in CronSim(self.spec, _aware(after, self.tz)):
                yield moment.timestamp()

    def latest_at_or_before(self, moment: float) -> float | None:
        """The last fire time at or before `moment`, if there is one."""
        if self.kind == "every":
            step = float(self.spec)
            return (moment // step) * step
        if self.kind == "at":
            once = self.once()
            return once if once <= moment else None
        slots = CronSim(self.spec, _aware(moment + 1e-3, self.tz), reverse=True)
        return next(slots).timestamp()

    def due(self, after: float, until: float, limit: int) -> list[float]:
        """Fire times in (`after`, `until`], the latest `limit` of them at most."""
        found: list[float] = []
        for slot in self.times_after(after):
            if slot > until:
                break
            found.append(slot)
            if len(found) > limit:
                found.pop(0)
        return found

    def once(self) -> float:
        """An `at` trigger's moment (its wall time in its zone; the first one in a repeat)."""
        return datetime.fromisoformat(self.spec).replace(tzinfo=zone(self.tz)).timestamp()

    def is_slot(self, moment: float) -> bool:
        """Whether `moment` is one of this trigger's fire times."""
        return self.latest_at_or_before(moment) == moment


def _aware(moment: float, tz: str) -> datetime:
    return datetime.fromtimestamp(moment, zone(tz))


def parse_trigger(cron: str | None, every: str | None, at: str | None, tz: str) -> Trigger:
    """The one trigger given, checked (invalid cron, unknown zone: one-line errors)."""
    given = [
        (kind, value) for kind, value in (("cron", cron), ("every", every), ("at", at)) if value
    ]
    if len(given) != 1:
        raise ConfigError("give exactly one of --cron, --every or --at")
    kind, value = given[0]
    zone(tz)
    if kind == "every":
        return Trigger("every", f"{parse_duration(value, '--every'):g}", tz)
    if kind == "at":
        try:
            wall = datetime.fromisoformat(value.replace("T", " "))
        except ValueError:
            raise ConfigError(
                f"--at {value!r}: write a date and time, e.g. 2027-01-15 08:00"
            ) from None
        if wall.tzinfo is not None:
            raise ConfigError(f"--at {value!r}: give the wall time; the zone comes from --tz")
        return Trigger("at", wall.isoformat(sep=" ", timespec="minutes"), tz)
    try:
        CronSim(value, datetime.now(zone(tz)))
    except CronSimError as exc:
        raise ConfigError(
            f"--cron {value!r}: {str(exc).lower()}; five fields: minute hour day month weekday"
        ) from None
    return Trigger("cron", " ".join(value.split()), tz)


def next_times(trigger: Trigger, now: float, count: int = 5) -> list[float]:
    """The next `count` fire times after `now` (fewer for `--at`)."""
    found: list[float] = []
    for slot in trigger.times_after(now):
        found.append(slot)
        if len(found) == count:
            break
    return found


def wall(moment: float, tz: str) -> str:
    """`2027-03-28 03:00 CEST (+02:00)`: a moment as the job's zone reads it (with seconds
    when it has any)."""
    local = datetime.fromtimestamp(moment, zone(tz))
    offset = local.strftime("%z")
    clock = "%H:%M:%S" if local.second else "%H:%M"
    return f"{local:%Y-%m-%d} {local.strftime(clock)} {local.tzname()} ({offset[:3]}:{offset[3:]})"


def utc_stamp(moment: float) -> str:
    """A moment as ISO UTC, as `--occurrence` takes it back: `2027-03-28T01:00:00Z`."""
    return datetime.fromtimestamp(moment, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_moment(text: str, tz: str) -> float:
    """An ISO time (`2027-03-28T01:00:00Z`, or a wall time in zone `tz`) as epoch seconds."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r}: write an ISO time, e.g. 2027-03-28T01:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone(tz))
    return moment.timestamp()


def dst_notes(trigger: Trigger, now: float, until: float) -> list[str]:
    """What the zone's clock changes between `now` and `until` do to the job, in words."""
    notes = []
    for change in _clock_changes(trigger.tz, now, min(until, now + MAX_SCAN_DAYS * 86400)):
        note = _change_note(trigger, change)
        if note:
            notes.append(note)
    return notes


def _clock_changes(tz: str, start: float, end: float) -> list[float]:
    """The moments in (`start`, `end`] at which the zone's UTC offset changes."""
    changes, hour = [], 3600.0
    moment = (start // hour) * hour
    offset = _offset(moment, tz)
    while moment < end:
        later = moment + hour
        if _offset(later, tz) != offset:
            low, high = moment, later  # the change is at a whole minute in (low, high]
            while high - low > 60:
                middle = ((low + high) / 2 // 60) * 60
                low, high = (middle, high) if _offset(middle, tz) == offset else (low, middle)
            changes.append(high)
            offset = _offset(later, tz)
        moment = later
    return [change for change in changes if start < change <= end]


def _offset(moment: float, tz: str) -> timedelta:
    return datetime.fromtimestamp(moment, zone(tz)).utcoffset() or timedelta(0)


def _change_note(trigger: Trigger, change: float) -> str:
    before, after = _offset(change - 1, trigger.tz), _offset(change, trigger.tz)
    shift = abs((after - before).total_seconds())
    day = datetime.fromtimestamp(change, zone(trigger.tz))
    change_wall = (datetime.fromtimestamp(change, timezone.utc) + before).replace(tzinfo=None)
    gap = after > before  # spring forward: wall times skipped; fall back: wall times repeated
    start = change_wall if gap else change_wall - timedelta(seconds=shift)
    span = f"{start:%H:%M}-{start + timedelta(seconds=shift):%H:%M}"
    if trigger.kind == "every":
        return (
            f"{day:%Y-%m-%d}: the clocks change at {change_wall:%H:%M}; --every counts real "
            "time, so its runs keep their spacing and their wall-clock times move by the change"
        )
    asked = _wall_matches(trigger, start, start + timedelta(seconds=shift))
    if not asked:
        return ""
    if gap:
        first = next(iter(trigger.times_after(change - 1)), None)
        what = "is skipped"  # unless the first run after the gap is not a run of its own
        if first is not None:
            local = datetime.fromtimestamp(first, zone(trigger.tz)).replace(tzinfo=None)
            if not _wall_matches(trigger, local, local + timedelta(minutes=1)):
                what = f"happens at {wall(first, trigger.tz)}"
        return (
            f"{day:%Y-%m-%d}: {span} does not exist (clocks go forward); the run asked for "
            f"{', '.join(asked)} {what}"
        )
    window = takewhile(lambda t: t < change + shift, trigger.times_after(change - shift - 1))
    passes = [wall(t, trigger.tz) for t in window]
    return (
        f"{day:%Y-%m-%d}: {span} happens twice (clocks go back); the run asked for "
        f"{', '.join(asked)} runs {'once, at ' if len(passes) == 1 else 'in both passes, at '}"
        + ", ".join(passes)
    )


def _wall_matches(trigger: Trigger, start: datetime, end: datetime) -> list[str]:
    """The wall times in [start, end) the trigger asks for, read as a clock with no changes."""
    if trigger.kind == "at":
        moment = datetime.fromisoformat(trigger.spec)
        return [f"{moment:%H:%M}"] if start <= moment < end else []
    found = []
    for moment in CronSim(trigger.spec, start - timedelta(seconds=1)):
        if moment >= end:
            break
        found.append(f"{moment:%H:%M}")
    return found
