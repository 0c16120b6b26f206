"""files: search and read text files, read-only, inside one directory you name.

    export AGENT_FILES_ROOT=~/notes
    agent tools call files_search '{"pattern": "*.md", "text": "invoice"}'
    agent tools call files_read '{"path": "2024/march.md"}'

Nothing outside `AGENT_FILES_ROOT` can be read: absolute paths, `..` and symbolic links that
lead out of it are refused. Files over 1 MB and binary files are skipped; results are capped.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from agent.plugins import ToolError, tool

ROOT_VARIABLE = "AGENT_FILES_ROOT"
MAX_FILE_BYTES = 1_000_000
MAX_RESULTS = 200
MAX_LINES = 500


@tool
def files_search(pattern: str = "*", text: str | None = None, max_results: int = 50) -> str:
    """Find files under the user's files directory by name pattern, and optionally by text
    they contain. Returns relative paths (with `path:line: text` for text matches).

    Args:
        pattern: A glob matched against the path relative to the directory, e.g. "*.md" or
            "src/*.py"; "*" also matches "/".
        text: Only lines containing this text (case-insensitive).
        max_results: At most this many results (up to 200).
    """
    root = files_root()
    limit = max(1, min(max_results, MAX_RESULTS))
    results: list[str] = []
    for path in _text_files(root):
        relative = path.relative_to(root).as_posix()
        if not fnmatch.fnmatch(relative, pattern):
            continue
        if text is None:
            results.append(relative)
        else:
            results.extend(_matching_lines(path, relative, text))
        if len(results) >= limit:
            return "\n".join([*results[:limit], f"[stopped at {limit} results]"])
    return "\n".join(results) or "no matches"


@tool
def files_read(path: str, start_line: int = 1, max_lines: int = 200) -> str:
    """Read lines of a text file in the user's files directory.

    Args:
        path: The file's path relative to the directory (as files_search gives it).
        start_line: The first line to read, counting from 1.
        max_lines: How many lines to read (up to 500).
    """
    file = confined(files_root(), path)
    if not file.is_file():
        raise ToolError(f"{path}: no such file")
    lines = _read_text(file).splitlines()
    first = max(start_line, 1) - 1
    chosen = lines[first : first + max(1, min(max_lines, MAX_LINES))]
    rest = len(lines) - first - len(chosen)
    more = f"\n[... {rest} more lines: call again with start_line={first + len(chosen) + 1}]"
    return "\n".join(chosen) + (more if rest > 0 else "")


def files_root() -> Path:
    """The directory these tools may read: `AGENT_FILES_ROOT`, resolved."""
    value = os.environ.get(ROOT_VARIABLE)
    if not value:
        raise ToolError(f"no files directory: the user must set {ROOT_VARIABLE} to one")
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise ToolError(f"{ROOT_VARIABLE}={value} is not a directory")
    return root


def confined(root: Path, relative: str) -> Path:
    """`relative` under `root`, symbolic links followed; `ToolError` if it leads outside."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ToolError(f"{relative}: outside the files directory; give a path inside it")
    return path


def _text_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            resolved = path.resolve()
            if resolved.is_relative_to(root) and resolved.is_file():
                found.append(path)
    return sorted(found, key=lambda path: path.relative_to(root).as_posix())


def _matching_lines(path: Path, relative: str, text: str) -> list[str]:
    try:
        content = _read_text(path.resolve())
    except ToolError:
        return []
    needle = text.lower()
    return [
        f"{relative}:{number}: {line.strip()[:200]}"
        for number, line in enumerate(content.splitlines(), 1)
        if needle in line.lower()
    ]


def _read_text(path: Path) -> str:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ToolError(f"{path.name} is over {MAX_FILE_BYTES // 1_000_000} MB")
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise ToolError(f"{path.name} is not a text file")
    return data.decode("utf-8", errors="replace")
