"""The house's shape: each part of sslbench imports only the parts below it, no import
circle (imports inside functions counted), no module over 500 lines, and only the entry
points and the bottom modules at the top of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sslbench"

# Bottom to top. A part may import itself and any part on a lower line, nothing beside it
# or above it.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("host",),
    ("transforms", "nn"),
    ("data", "pretext"),
    ("config",),
    ("methods",),
    ("eval",),
    ("run",),
    ("grid", "report", "tools"),
    ("cli",),
    ("__main__",),
]
TOP_LEVEL = {"__init__", "__main__", "cli", "errors", "host"}
MAX_LINES = 500


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The sslbench modules ``name`` imports anywhere in its file, function bodies too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from package import module` imports the module, not only the package
            targets = [
                f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    # Every module's import loads the root package first, so an import of the root (for
    # __version__) adds nothing; the root itself imports tools.export lazily inside
    # load_backbone, which keeps torch out of `import sslbench`.
    return {
        name: imports_of(name, path, set(known)) - {"sslbench"}
        for name, path in known.items()
        if name != "sslbench"
    }


def part_of(name: str) -> str:
    return name.split(".")[1]


def rank_of(part: str) -> int:
    for rank, parts in enumerate(LAYERS):
        if part in parts:
            return rank
    raise AssertionError(f"sslbench.{part} is on no layer of tests/test_layout.py: add it")


def import_circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return circles


def test_there_is_no_import_circle() -> None:
    assert import_circles(graph()) == []


def test_the_circle_finder_finds_one() -> None:
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_part_imports_only_downward() -> None:
    upward = [
        f"{source} imports {target}"
        for source, targets in graph().items()
        for target in sorted(targets)
        if part_of(source) != part_of(target)
        and rank_of(part_of(target)) >= rank_of(part_of(source))
    ]
    assert upward == []


def test_imports_inside_functions_are_counted(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from sslbench.run import pretrain\n    import sslbench.host\n")
    assert imports_of("sslbench.x", module, {"sslbench.run.pretrain", "sslbench.host"}) == {
        "sslbench.run.pretrain",
        "sslbench.host",
    }


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_over_500_lines(name: str) -> None:
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: make it two modules"


def test_the_top_level_holds_only_entry_points_and_the_bottom() -> None:
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL
