"""The plugins shipped in `tools/`, loaded as plugins and called as the model would call them."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import Settings
from agent.paths import shipped_tools_dir
from agent.tools.invoke import ToolOutcome, invoke_tool
from agent.tools.toolset import Toolset, open_toolset
from tests.clirun import empty_mcp_config


@pytest.fixture()
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Toolset]:
    """Only the shipped plugins (no user tools, no MCP servers)."""
    monkeypatch.setenv("AGENT_TOOLS_PATH", str(tmp_path / "no-user-tools"))
    settings = Settings(
        mcp_config=empty_mcp_config(tmp_path), tools=("calculator", "files", "sqlite_query")
    )
    with open_toolset(settings, tmp_path, tmp_path) as toolset:
        assert toolset.problems == []
        yield toolset


def call(toolset: Toolset, name: str, arguments: dict[str, object]) -> ToolOutcome:
    return invoke_tool(toolset.get(name), json.dumps(arguments))


def test_shipped_tools_come_from_the_packages_own_directory(shipped: Toolset) -> None:
    root = shipped_tools_dir()  # inside the package, installed or checked out
    sources = {entry.tool.name: entry.source for entry in shipped.entries}
    assert sources == {
        "calculator": str(root / "calculator.py"),
        "files_search": str(root / "files.py"),
        "files_read": str(root / "files.py"),
        "sqlite_query": str(root / "sqlite_query.py"),
    }


# --- calculator --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("2**100", str(2**100)),
        ("(1 + 2) * -3 // 2 % 7", str((1 + 2) * -3 // 2 % 7)),
        ("7 / 2", "3.5"),
        ("sqrt(16) + factorial(5) - abs(-1)", "123.0"),
        ("round(pi, 3)", "3.142"),
        ("max(1, 2, gcd(12, 18))", "6"),
    ],
)
def test_calculator_evaluates_arithmetic(shipped: Toolset, expression: str, result: str) -> None:
    outcome = call(shipped, "calculator", {"expression": expression})
    assert (outcome.ok, outcome.content) == (True, result)


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("__import__('os').system('echo hi')", "not allowed in an expression"),
        ("__import__('os')", "unknown function '__import__'"),
        ("(1).__class__", "not allowed in an expression: '1 .__class__'"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("x + 1", "not allowed in an expression: 'x'"),
        ("'a' * 3", "not allowed in an expression: \"'a'\""),
        ("9 ** 9 ** 9", "exponents are limited to 10000"),
        ("(2 ** 9000) * (2 ** 9000)", "the result would be over 10000 bits"),
        ("factorial(100000)", "factorial is limited to 1000"),
        ("1 / 0", "division by zero"),
        ("2 +", "not an arithmetic expression"),
        ("1" * 1001, "longer than 1000 characters"),
    ],
)
def test_calculator_refuses_anything_but_bounded_arithmetic(
    shipped: Toolset, expression: str, error: str
) -> None:
    outcome = call(shipped, "calculator", {"expression": expression})
    assert not outcome.ok and error in outcome.content, outcome.content


# --- files -------------------------------------------------------------------------------------


@pytest.fixture()
def files_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "notes"
    (root / "2024").mkdir(parents=True)
    (root / "todo.md").write_text("buy milk\nsend the Invoice\n")
    (root / "2024" / "march.md").write_text("\n".join(f"line {n}" for n in range(1, 301)))
    (root / "data.bin").write_bytes(b"\0invoice")
    (tmp_path / "secret.txt").write_text("invoice: top secret")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    monkeypatch.setenv("AGENT_FILES_ROOT", str(root))
    return root


def test_files_search_by_name_and_text(shipped: Toolset, files_root: Path) -> None:
    found = call(shipped, "files_search", {"pattern": "*.md"})
    assert found.content == "2024/march.md\ntodo.md"
    lines = call(shipped, "files_search", {"text": "INVOICE"})
    assert lines.content == "todo.md:2: send the Invoice"  # not the binary, not the link out
    capped = call(shipped, "files_search", {"text": "line", "max_results": 2})
    assert (
        capped.content == "2024/march.md:1: line 1\n2024/march.md:2: line 2\n[stopped at 2 results]"
    )


def test_files_read_pages_through_a_file(shipped: Toolset, files_root: Path) -> None:
    first = call(shipped, "files_read", {"path": "2024/march.md", "max_lines": 2})
    assert first.content == "line 1\nline 2\n[... 298 more lines: call again with start_line=3]"
    last = call(shipped, "files_read", {"path": "2024/march.md", "start_line": 300})
    assert last.content == "line 300"


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("../secret.txt", "../secret.txt: outside the files directory"),
        ("link.txt", "link.txt: outside the files directory"),
        ("/etc/passwd", "/etc/passwd: outside the files directory"),
        ("data.bin", "data.bin is not a text file"),
        ("missing.md", "missing.md: no such file"),
    ],
)
def test_files_read_stays_inside_the_directory(
    shipped: Toolset, files_root: Path, path: str, error: str
) -> None:
    outcome = call(shipped, "files_read", {"path": path})
    assert not outcome.ok and outcome.content.startswith(f"Error: {error}"), outcome.content


def test_files_tools_need_a_directory(shipped: Toolset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENT_FILES_ROOT", raising=False)
    outcome = call(shipped, "files_search", {})
    assert outcome.content == "Error: no files directory: the user must set AGENT_FILES_ROOT to one"


# --- sqlite_query ------------------------------------------------------------------------------


@pytest.fixture()
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        connection.executemany(
            "INSERT INTO items (name, price) VALUES (?, ?)",
            [(f"item {n}", n * 1.5) for n in range(1, 251)],
        )
    connection.close()
    monkeypatch.setenv("AGENT_SQLITE_DB", str(path))
    return path


def query(toolset: Toolset, sql: str) -> ToolOutcome:
    return call(toolset, "sqlite_query", {"sql": sql})


def test_sqlite_query_reads_rows(shipped: Toolset, database: Path) -> None:
    outcome = query(shipped, "SELECT name, price FROM items WHERE id <= 2 ORDER BY id")
    assert json.loads(outcome.content) == {
        "columns": ["name", "price"],
        "rows": [["item 1", 1.5], ["item 2", 3.0]],
    }
    info = json.loads(query(shipped, "PRAGMA table_info(items)").content)
    assert [row[1] for row in info["rows"]] == ["id", "name", "price"]
    many = json.loads(query(shipped, "-- all of them\nSELECT id FROM items").content)
    assert len(many["rows"]) == 200 and many["truncated"] == "only the first 200 rows"


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("DELETE FROM items", "only SELECT, WITH, EXPLAIN and PRAGMA table_info(...)"),
        ("PRAGMA query_only = OFF", "only SELECT, WITH, EXPLAIN and PRAGMA table_info(...)"),
        ("WITH x AS (SELECT 1) INSERT INTO items (name) VALUES ('x')", "SQLite: attempt to write"),
        ("SELECT 1; DROP TABLE items", "SQLite: You can only execute one statement at a time"),
        ("SELECT * FROM missing", "SQLite: no such table: missing"),
    ],
)
def test_sqlite_query_cannot_write(shipped: Toolset, database: Path, sql: str, error: str) -> None:
    outcome = query(shipped, sql)
    assert not outcome.ok and error in outcome.content, outcome.content
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT count(*) FROM items").fetchone() == (250,)
    connection.close()


def test_sqlite_query_needs_a_database(shipped: Toolset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_SQLITE_DB", "/no/such.sqlite")
    outcome = query(shipped, "SELECT 1")
    assert outcome.content == "Error: AGENT_SQLITE_DB=/no/such.sqlite: no such file"
