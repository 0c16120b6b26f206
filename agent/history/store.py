"""The run history store: conversations → runs → events, in one SQLite file.

Opened in WAL mode with a busy timeout, so several processes (`agent run` in parallel, a chat
and the scheduler) write at once: each waits its turn instead of failing. Events are written
as they arrive, one small transaction each, so a crash keeps everything up to the crash; a run
left `running` by a process that is gone is marked `interrupted` the next time the database is
opened. stdlib `sqlite3` is all this needs (FTS5 is built in).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.errors import ConfigError
from agent.events import Answer, Event, RunFinished, RunStarted, ToolCall, ToolResult
from agent.history.schema import migrate
from agent.history.transcript import messages_from_events, split_pending

BUSY_TIMEOUT_MS = 30_000
# Marks a run's message that came before its prompt (an MCP prompt's earlier messages).
BEFORE_PROMPT = "before_prompt"
_RUN_COLUMNS = (
    "id, conversation_id, turn, started_at, finished_at, status, model, backend, thinking, "
    "prompt, answer, prompt_tokens, completion_tokens, origin, origin_run, origin_step, continues"
)


class UnknownRunError(ConfigError):
    """No run or conversation has the id the user gave."""


@dataclass(frozen=True)
class RunRecord:
    """One run as the history lists it."""

    id: str
    conversation_id: str
    turn: int
    started_at: float
    finished_at: float | None
    status: str
    model: str
    backend: str
    thinking: bool
    prompt: str
    answer: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    origin: str | None = None  # "fork" or "resume": this run was started from `origin_run`
    origin_run: str | None = None
    origin_step: int | None = None  # a fork's step: before this tool call (None: the end)
    continues: bool = False  # no prompt of its own: it goes on with the turn before it


@dataclass(frozen=True)
class RunOrigin:
    """Where a run came from: a `fork` of `run` (before tool call `step`, or from its end
    when None) or a `resume` of it."""

    kind: str
    run: str
    step: int | None = None


def new_id(prefix: str) -> str:
    """A sortable id a user can type: `r-20261201-221503-3fa9`."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def fts_phrase(text: str) -> str:
    """User text as one FTS5 phrase: hyphens, quotes, `*` and operators are searched as written."""
    return '"' + text.replace('"', '""') + '"'


class History:
    """An open history database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL sync survives a killed process (the events up to the kill stay);
            # only a power cut may lose the last ones. FULL fsyncs at every event: ~8x slower.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            migrate(self._conn)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise ConfigError(
                f"run history {path}: {exc}; move it aside, or set AGENT_HISTORY to another file"
            ) from None
        self._mark_interrupted()

    def close(self) -> None:
        """Close the database."""
        self._conn.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The open connection (autocommit), for the rooms that keep tables of their own here."""
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (`BEGIN IMMEDIATE`): all of it or nothing."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------------

    def new_conversation(self, kind: str, base_messages: list[dict[str, Any]] | None = None) -> str:
        """A new conversation (`chat`, or `run` for a one-turn `agent run`); its id.

        `base_messages`: the messages it starts from (a fork's, taken from another run)."""
        conversation = new_id("c")
        self._conn.execute(
            "INSERT INTO conversations (id, kind, started_at, base_messages) VALUES (?, ?, ?, ?)",
            (
                conversation,
                kind,
                time.time(),
                json.dumps(base_messages, ensure_ascii=False) if base_messages else None,
            ),
        )
        return conversation

    def start_run(
        self,
        conversation: str,
        started: RunStarted,
        settings: dict[str, Any],
        origin: RunOrigin | None = None,
        continues: bool = False,
    ) -> str:
        """Record a run as it starts (where it came from; whether it `continues` the turn
        before it rather than starting one with its prompt); its id (the one the event
        carries, if new here)."""
        run = started.run_id or new_id("r")
        if self._conn.execute("SELECT 1 FROM runs WHERE id = ?", (run,)).fetchone():
            run = new_id("r")
        me = psutil.Process()
        turn = self._conn.execute(
            "SELECT COALESCE(MAX(turn), 0) + 1 FROM runs WHERE conversation_id = ?", (conversation,)
        ).fetchone()[0]
        self._conn.execute(
            "INSERT INTO runs (id, conversation_id, turn, started_at, status, model, backend, "
            "thinking, settings, prompt, pid, pid_started, origin, origin_run, origin_step, "
            "continues) "
            "VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run,
                conversation,
                turn,
                started.started_at,
                started.model,
                started.backend,
                int(started.thinking),
                json.dumps(settings, default=str),
                started.prompt,
                me.pid,
                me.create_time(),
                origin.kind if origin else None,
                origin.run if origin else None,
                origin.step if origin else None,
                int(continues),
            ),
        )
        self._index(run, started.prompt)
        return run

    def add_event(self, run: str, seq: int, event: Event) -> None:
        """Store one event of `run` (and index what it says for search)."""
        self._conn.execute(
            "INSERT INTO events (run_id, seq, type, data, at) VALUES (?, ?, ?, ?, ?)",
            (run, seq, event.type, json.dumps(event.to_dict(), ensure_ascii=False), time.time()),
        )
        if isinstance(event, ToolCall):
            self._index(run, f"{event.name} {json.dumps(event.arguments, ensure_ascii=False)}")
        elif isinstance(event, ToolResult):
            self._index(run, event.content)
        elif isinstance(event, Answer):
            self._index(run, event.text)
            self._conn.execute("UPDATE runs SET answer = ? WHERE id = ?", (event.text, run))
        elif isinstance(event, RunFinished):
            self._finish(run, event)

    def set_messages(self, run: str, messages: list[dict[str, Any]]) -> None:
        """The messages this run adds to its conversation, as the model sees them next turn."""
        self._conn.execute(
            "UPDATE runs SET messages = ? WHERE id = ?",
            (json.dumps(messages, ensure_ascii=False), run),
        )

    def _finish(self, run: str, finished: RunFinished) -> None:
        self._conn.execute(
            "UPDATE runs SET status = ?, finished_at = ?, prompt_tokens = ?, "
            "completion_tokens = ?, timings = ? WHERE id = ?",
            (
                finished.status,
                time.time(),
                finished.usage.get("prompt_tokens"),
                finished.usage.get("completion_tokens"),
                json.dumps(finished.timings),
                run,
            ),
        )

    def _index(self, run: str, text: str) -> None:
        self._conn.execute("INSERT INTO search (run_id, text) VALUES (?, ?)", (run, text))

    def _mark_interrupted(self) -> None:
        """Runs still `running` whose process is gone (or is another by now) are interrupted."""
        rows = self._conn.execute(
            "SELECT id, pid, pid_started FROM runs WHERE status = 'running'"
        ).fetchall()
        for run, pid, pid_started in rows:
            if not process_alive(pid, pid_started):
                self._conn.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = COALESCE(finished_at, "
                    "(SELECT MAX(json_extract(data, '$.started_at')) FROM events "
                    "WHERE run_id = runs.id), started_at) WHERE id = ? AND status = 'running'",
                    (run,),
                )

    # --- reading -----------------------------------------------------------------------------

    def runs(
        self,
        *,
        limit: int = 20,
        status: str | None = None,
        search: str | None = None,
        since: float | None = None,
        tool: str | None = None,
    ) -> list[RunRecord]:
        """The newest runs that match every filter given, newest first."""
        where: list[str] = ["1 = 1"]
        args: list[Any] = []
        if status:
            where.append("status = ?")
            args.append(status)
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        if search:
            where.append("id IN (SELECT run_id FROM search WHERE search MATCH ?)")
            args.append(fts_phrase(search))
        if tool:
            where.append(
                "id IN (SELECT run_id FROM events WHERE type = 'tool_call' "
                "AND json_extract(data, '$.name') = ?)"
            )
            args.append(tool)
        query = (
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)} "
            "ORDER BY started_at DESC LIMIT ?"
        )
        return [_record(row) for row in self._conn.execute(query, (*args, limit))]

    def run(self, run: str) -> RunRecord:
        """The run with this id (or unique id prefix)."""
        rows = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id LIKE ? ORDER BY id LIMIT 2",
            (_prefix(run),),
        ).fetchall()
        if len(rows) != 1:
            raise UnknownRunError(_unknown(run, len(rows), "run"))
        return _record(rows[0])

    def conversation_of(self, some_id: str) -> str:
        """The conversation a run or conversation id (or unique prefix) names."""
        found = self._conn.execute(
            "SELECT id FROM conversations WHERE id LIKE ? LIMIT 2", (_prefix(some_id),)
        ).fetchall()
        if len(found) == 1:
            return str(found[0][0])
        return self.run(some_id).conversation_id

    def selected_runs(self, some_id: str) -> list[RunRecord]:
        """The run a run id names, or every run of the conversation a conversation id names."""
        members = self.conversation_runs(self.conversation_of(some_id))
        return [run for run in members if run.id.startswith(some_id)] or members

    def conversation_runs(self, conversation: str) -> list[RunRecord]:
        """Every run of a conversation, in turn order."""
        query = f"SELECT {_RUN_COLUMNS} FROM runs WHERE conversation_id = ? ORDER BY turn"
        return [_record(row) for row in self._conn.execute(query, (conversation,))]

    def last_conversation(self, kind: str = "chat") -> str | None:
        """The conversation of this kind that was active last."""
        row = self._conn.execute(
            "SELECT c.id FROM conversations c JOIN runs r ON r.conversation_id = c.id "
            "WHERE c.kind = ? ORDER BY r.started_at DESC LIMIT 1",
            (kind,),
        ).fetchone()
        return str(row[0]) if row else None

    def run_settings(self, run: str) -> dict[str, Any]:
        """The settings a run used (as recorded, without secrets)."""
        row = self._conn.execute("SELECT settings FROM runs WHERE id = ?", (run,)).fetchone()
        return dict(json.loads(row[0])) if row else {}

    def conversation_kind(self, conversation: str) -> str:
        """`chat`, `run` or `job` (a scheduled job's run)."""
        row = self._conn.execute(
            "SELECT kind FROM conversations WHERE id = ?", (conversation,)
        ).fetchone()
        return str(row[0]) if row else ""

    def events(self, run: str) -> Iterator[dict[str, Any]]:
        """The stored events of a run, in order, as dicts."""
        for (data,) in self._conn.execute(
            "SELECT data FROM events WHERE run_id = ? ORDER BY seq", (run,)
        ):
            yield json.loads(data)

    def timed_events(self, run: str) -> Iterator[tuple[float | None, dict[str, Any]]]:
        """The stored events of a run, in order, with when each was stored (None before
        the history kept it)."""
        for at, data in self._conn.execute(
            "SELECT at, data FROM events WHERE run_id = ? ORDER BY seq", (run,)
        ):
            yield at, json.loads(data)

    def stored_messages(self, run: str) -> list[dict[str, Any]] | None:
        """The messages `run` added, as kept when its turn ended; None when it never ended."""
        row = self._conn.execute("SELECT messages FROM runs WHERE id = ?", (run,)).fetchone()
        return list(json.loads(row[0])) if row and row[0] else None

    def run_messages(self, run: str) -> list[dict[str, Any]]:
        """The messages `run` added: as stored, else rebuilt from its events (a killed run)."""
        stored = self.stored_messages(run)
        return stored if stored is not None else messages_from_events(self.events(run))

    def messages(self, conversation: str, before_turn: int | None = None) -> list[dict[str, Any]]:
        """The conversation's messages as the model saw them, turn after turn (those before
        turn `before_turn`, if given): the messages it was forked from, then each run's
        prompt (unless it continues the turn before) and messages. A run that died has what it
        did so far, without the tool calls that had not returned."""
        row = self._conn.execute(
            "SELECT base_messages FROM conversations WHERE id = ?", (conversation,)
        ).fetchone()
        found: list[dict[str, Any]] = json.loads(row[0]) if row and row[0] else []
        runs = self._conn.execute(
            "SELECT id, prompt, continues FROM runs WHERE conversation_id = ? AND turn < ? "
            "ORDER BY turn",
            (conversation, before_turn if before_turn is not None else 2**62),
        ).fetchall()
        for run, prompt, continues in runs:
            kept = split_pending(self.run_messages(run))[0]
            found.extend(  # an MCP prompt's messages, sent before the run's own prompt
                {key: value for key, value in m.items() if key != BEFORE_PROMPT}
                for m in kept
                if m.get(BEFORE_PROMPT)
            )
            if not continues:
                found.append({"role": "user", "content": prompt})
            found.extend(m for m in kept if not m.get(BEFORE_PROMPT))
        return found

    def delete(self, some_id: str) -> str:
        """Delete a run, or a whole conversation; what was deleted, in words."""
        found = self._conn.execute(
            "SELECT id FROM conversations WHERE id LIKE ? LIMIT 2", (_prefix(some_id),)
        ).fetchall()
        with self.transaction():
            if len(found) == 1:
                conversation = found[0][0]
                runs = [r.id for r in self.conversation_runs(conversation)]
                what = f"conversation {conversation} ({len(runs)} runs)"
            else:
                record = self.run(some_id)
                conversation, runs, what = None, [record.id], f"run {record.id}"
            for run in runs:
                self._conn.execute("DELETE FROM search WHERE run_id = ?", (run,))
                self._conn.execute("DELETE FROM events WHERE run_id = ?", (run,))
                self._conn.execute("DELETE FROM runs WHERE id = ?", (run,))
            if conversation is not None:
                self._conn.execute("DELETE FROM conversations WHERE id = ?", (conversation,))
        return what


def _record(row: tuple[Any, ...]) -> RunRecord:
    values = list(row)
    values[8] = bool(values[8])
    values[16] = bool(values[16])
    return RunRecord(*values)


def _prefix(some_id: str) -> str:
    return some_id.replace("\\", "").replace("%", "").replace("_", "") + "%"


def _unknown(some_id: str, matches: int, what: str) -> str:
    if matches > 1:
        return f"more than one {what} starts with {some_id!r}; give more of the id"
    return f"no run or conversation {some_id!r} in the history (agent runs list shows them)"


def process_alive(pid: int | None, started: float | None) -> bool:
    """Whether process `pid`, started at `started` (epoch seconds), still runs (a pid reused
    by another process since does not count)."""
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        return abs(psutil.Process(pid).create_time() - (started or 0)) < 1.0
    except psutil.Error:
        return False
