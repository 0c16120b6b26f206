"""sqlite_query: read-only SQL on one SQLite database you name.

    export AGENT_SQLITE_DB=~/data/shop.sqlite
    agent tools call sqlite_query '{"sql": "SELECT name FROM sqlite_master WHERE type = 'table'"}'

Read-only three times over: the file is opened with `mode=ro`, `PRAGMA query_only` is on, and
only SELECT, WITH, EXPLAIN and `PRAGMA table_info(...)` statements are accepted (one at a
time). At most 200 rows come back, and a query is stopped after 10 seconds.

Written as a Qwen-Agent `@register_tool` class, to show that way of writing a tool.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from qwen_agent.tools.base import BaseTool, register_tool

from agent.plugins import ToolError

DATABASE_VARIABLE = "AGENT_SQLITE_DB"
MAX_ROWS = 200
TIMEOUT_S = 10.0
ALLOWED = re.compile(r"^\s*(SELECT|WITH|EXPLAIN|PRAGMA\s+table_info\s*\()", re.IGNORECASE)


@register_tool("sqlite_query")
class SQLiteQuery(BaseTool):
    description = (
        "Run one read-only SQL query (SELECT, WITH, EXPLAIN or PRAGMA table_info(t)) on the "
        "user's SQLite database; list its tables with "
        "SELECT name, sql FROM sqlite_master WHERE type = 'table'. Returns columns and rows "
        f"as JSON, at most {MAX_ROWS} rows."
    )
    parameters = {
        "type": "object",
        "properties": {"sql": {"type": "string", "description": "One SQL statement."}},
        "required": ["sql"],
    }

    def call(self, params: str | dict, **kwargs: Any) -> str:
        sql = self._verify_json_format_args(params)["sql"]
        if not ALLOWED.match(_without_comments(sql)):
            raise ToolError("only SELECT, WITH, EXPLAIN and PRAGMA table_info(...) are allowed")
        with closing(_connect(database_path())) as connection:
            try:
                cursor = connection.execute(sql)
                rows = cursor.fetchmany(MAX_ROWS + 1)
            except sqlite3.Error as exc:
                raise ToolError(f"SQLite: {exc}") from None
            columns = [column[0] for column in cursor.description or []]
        result = {"columns": columns, "rows": [list(row) for row in rows[:MAX_ROWS]]}
        if len(rows) > MAX_ROWS:
            result["truncated"] = f"only the first {MAX_ROWS} rows"
        return json.dumps(result, ensure_ascii=False, default=_blob)


def database_path() -> Path:
    """The database file named by `AGENT_SQLITE_DB`."""
    value = os.environ.get(DATABASE_VARIABLE)
    if not value:
        raise ToolError(f"no database: the user must set {DATABASE_VARIABLE} to a SQLite file")
    path = Path(value).expanduser().resolve()
    if not path.is_file():
        raise ToolError(f"{DATABASE_VARIABLE}={value}: no such file")
    return path


def _connect(path: Path) -> sqlite3.Connection:
    """A read-only connection whose queries stop after `TIMEOUT_S`."""
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    connection.execute("PRAGMA query_only = ON")
    deadline = time.monotonic() + TIMEOUT_S
    connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
    return connection


def _without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", sql, flags=re.DOTALL)


def _blob(value: Any) -> str:
    return f"<{len(value)} bytes>" if isinstance(value, bytes) else str(value)
