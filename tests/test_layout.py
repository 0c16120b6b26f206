"""The house: the spine imports no room, and no two packages import each other in a circle."""

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parent.parent / "agent"
SPINE = {"config", "errors", "events", "paths", "plugins", "qwen_agent_compat", "render"}


def _room(module: str) -> str:
    """`agent.tools.toolset` -> `tools`; a top-level module is its own room."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    """Every `agent.*` module a file imports, lazily imported ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent"):
            found.update(
                f"{node.module}.{alias.name}" if node.module == "agent" else node.module
                for alias in node.names
            )
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("agent."))
    return {name for name in found if name.count(".") >= 1}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in AGENT.rglob("*.py"):
        parts = path.relative_to(AGENT).with_suffix("").parts
        if parts in (("__init__",), ("__main__",)):
            continue
        room = parts[0]
        graph.setdefault(room, set()).update(_room(m) for m in _imports(path) if _room(m) != room)
    return graph


def test_the_rooms_are_the_packages_of_the_data_flow() -> None:
    rooms = set(_graph())
    assert {"backends", "cli", "loop", "tools", "sandbox", "eval", "testing"} <= rooms
    assert rooms >= SPINE


@pytest.mark.parametrize("module", sorted(SPINE))
def test_spine_modules_import_only_the_spine(module: str) -> None:
    assert _graph()[module] <= SPINE, f"agent/{module}.py imports {_graph()[module] - SPINE}"


def test_no_import_cycle_between_rooms() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(room: str, path: list[str]) -> None:
        assert room not in path, "import cycle: " + " -> ".join([*path, room])
        if room in done:
            return
        for target in sorted(graph.get(room, ())):
            visit(target, [*path, room])
        done.add(room)

    for room in sorted(graph):
        visit(room, [])


def test_only_the_cli_imports_the_cli() -> None:
    assert [room for room, targets in _graph().items() if "cli" in targets] == []


def test_the_engine_imports_no_room_but_the_spine() -> None:
    assert _graph()["engine"] <= SPINE, f"agent/engine imports {_graph()['engine'] - SPINE}"


def _module_file(module: str) -> Path | None:
    path = AGENT.parent.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _runtime_imports(path: Path) -> set[str]:
    """Every module a file imports, less what it imports only for type checking."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("room", ["engine", "server"])
def test_the_engine_and_the_server_reach_no_qwen_agent(room: str) -> None:
    """Through every agent module they import, at any depth (the package's own __init__, which
    contains Qwen-Agent's side effects for everyone, aside)."""
    todo = [p for p in (AGENT / room).rglob("*.py")]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _runtime_imports(path):
            assert not module.startswith("qwen_agent"), (
                f"{path.relative_to(AGENT)} imports {module}"
            )
            if module.startswith("agent.") and module != "agent.qwen_agent_compat":
                target = _module_file(module)
                if target is not None:
                    todo.append(target)
