"""The history database's schema, as numbered migrations applied once, in order.

`PRAGMA user_version` holds the number of migrations applied. `migrate()` takes the write lock
first (`BEGIN IMMEDIATE`), so when several processes open a new or older database at once, one
applies what is missing and the others find it done. Never edit a released migration: add one.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: conversations, their runs, and each run's events in order.
    """
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        started_at REAL NOT NULL
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        turn INTEGER NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        backend TEXT NOT NULL,
        thinking INTEGER NOT NULL,
        settings TEXT NOT NULL,
        prompt TEXT NOT NULL,
        answer TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        timings TEXT,
        messages TEXT,
        pid INTEGER,
        pid_started REAL
    );
    CREATE INDEX runs_by_conversation ON runs (conversation_id, turn);
    CREATE INDEX runs_by_start ON runs (started_at);
    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    """,
    # 2: full-text search over prompts, answers, tool calls and tool results (filled from
    # the events already stored).
    """
    CREATE VIRTUAL TABLE search USING fts5(run_id UNINDEXED, text);
    INSERT INTO search (run_id, text) SELECT id, prompt FROM runs;
    INSERT INTO search (run_id, text)
        SELECT run_id, json_extract(data, '$.name') || ' ' || json_extract(data, '$.arguments')
        FROM events WHERE type = 'tool_call';
    INSERT INTO search (run_id, text)
        SELECT run_id, json_extract(data, '$.content') FROM events WHERE type = 'tool_result';
    INSERT INTO search (run_id, text)
        SELECT run_id, json_extract(data, '$.text') FROM events WHERE type = 'answer';
    """,
    # 3: scheduled jobs, and the ledger of their occurrences: one row per job and scheduled
    # time (UTC seconds), claimed before it runs, so no occurrence runs twice.
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        spec TEXT NOT NULL,
        checked_until REAL NOT NULL
    );
    CREATE TABLE occurrences (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        scheduled_at REAL NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        trigger TEXT NOT NULL,
        run_id TEXT,
        answer_file TEXT,
        pid INTEGER,
        pid_started REAL,
        heartbeat_at REAL,
        claimed_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        PRIMARY KEY (job_id, scheduled_at)
    );
    CREATE INDEX occurrences_by_status ON occurrences (status);
    CREATE TABLE schedulers (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pid INTEGER NOT NULL,
        pid_started REAL NOT NULL,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    """,
    # 4: where a run came from: a fork (of a run, before one of its tool calls or from its
    # end) starts a new conversation from that run's messages (`base_messages`); a resume
    # goes on with an interrupted run in its conversation. A run that `continues` has no
    # prompt of its own: the model goes on with the turn before it.
    """
    ALTER TABLE conversations ADD COLUMN base_messages TEXT;
    ALTER TABLE runs ADD COLUMN origin TEXT;
    ALTER TABLE runs ADD COLUMN origin_run TEXT;
    ALTER TABLE runs ADD COLUMN origin_step INTEGER;
    ALTER TABLE runs ADD COLUMN continues INTEGER NOT NULL DEFAULT 0;
    """,
    # 5: the sha256 of the task file an occurrence ran (a job of `--task FILE` reads the file
    # again at each run), so its history says which content each run had.
    """
    ALTER TABLE occurrences ADD COLUMN task_sha256 TEXT;
    """,
    # 6: when each event was stored (UTC seconds; events come as they happen), for a run's
    # timeline with its model and tool calls' durations. Older events have none.
    """
    ALTER TABLE events ADD COLUMN at REAL;
    """,
)
VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, to: int = VERSION) -> int:
    """Apply the migrations `conn` lacks, up to `to`, in one transaction; the version reached.

    `conn` must be in autocommit mode (isolation_level None)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise sqlite3.DatabaseError(
                f"the database is of a newer version ({version}) than this agent knows ({VERSION})"
            )
        for number in range(version, to):
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
        if to > version:
            conn.execute(f"PRAGMA user_version = {to}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return max(version, to)


def _statements(script: str) -> list[str]:
    """The statements of a migration (none of ours has a `;` inside a string)."""
    return [part.strip() for part in script.split(";") if part.strip()]
