"""The engine's layering: no import circles, no file past the size where it needs splitting.

Every import counts, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (type-only imports never run). A function-level import
that closes a circle still couples the two modules both ways.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"
MAX_LINES = 620


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The engine modules ``path`` imports (resolving ``from engine import x`` to ``engine.x`` when it is one)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from pkg import submodule` needs the submodule, not names defined in pkg/__init__.
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            found.update(subs)
            if len(subs) < len(node.names):
                found.add(base)
    return {m for m in found if m in modules}


def import_graph() -> dict[str, set[str]]:
    files = sorted(ENGINE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports_of(f, modules) for f in files}
    # `import engine.x` also runs engine/__init__; the package front door itself may import anything.
    return {m: {d for d in deps if d != m and d != "engine"} for m, deps in graph.items() if m != "engine"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_engine_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_type_only_imports_do_not_count(tmp_path: Path) -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from engine.loop import Trainer\n"
    (tmp_path / "m.py").write_text(source)
    global ENGINE
    saved, ENGINE = ENGINE, tmp_path
    try:
        assert imports_of(tmp_path / "m.py", {"engine.loop"}) == set()
    finally:
        ENGINE = saved


def test_plugins_do_not_reach_below_the_public_api() -> None:
    """Built-in plugins are written as a third party would: ``import engine`` and its public modules."""
    allowed = {"engine", "engine.testing", "engine.metrics", "engine.recipes"}
    offenders = []
    for path in sorted((ENGINE.parent / "plugins").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [
                f"{path.relative_to(ENGINE.parent)}: {n}" for n in names if n.startswith("engine") and n not in allowed
            ]
    assert not offenders, offenders


@pytest.mark.parametrize("path", sorted(ENGINE.rglob("*.py")), ids=lambda p: str(p.relative_to(ENGINE)))
def test_no_engine_file_is_too_long(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ENGINE.parent)} has {lines} lines; split it by concern"


def test_every_hook_argument_is_documented() -> None:
    """Like datasette's docs test: a hook argument without a ``:param`` is a hook nobody can use."""
    from engine import hookspecs

    tree = ast.parse(Path(hookspecs.__file__).read_text())
    missing = [
        f"{node.name}({arg.arg})"
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("gentrain_")
        for arg in node.args.args
        if f":param {arg.arg}:" not in (ast.get_docstring(node) or "")
    ]
    assert not missing, missing
