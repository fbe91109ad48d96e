"""The floors of ``docs/architecture.md``, enforced by reading the imports of every module (with
``ast``, nothing is imported): no import circle between the files of ``core/``, no ``core/``
module importing a ``transferkit.plugins`` module, and no built-in plugin importing a private
(underscore) name of the host, which a third-party plugin could not rely on either.

Every import counts, a function's included (a lazy import is still a dependency), except those
under ``if TYPE_CHECKING:``, which never run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the import names of the two packages: core/ installs as transferkit, plugins/ as its .plugins
PACKAGES = {"transferkit": ROOT / "core", "transferkit.plugins": ROOT / "plugins"}


def modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` by its dotted name (a package by its own name)."""
    root = PACKAGES[package]
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([package, *parts])] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(name: str, path: Path) -> Iterator[tuple[str, str, int]]:
    """``(module, imported name or "", line)`` for each import that runs in the module ``name``:
    ``from a.b import c`` gives ``("a.b", "c", line)``, ``import a.b`` gives ``("a.b", "", line)``;
    relative imports are resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[tuple[str, str, int]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    yield from walk_one(other)
                continue
            yield from walk_one(child)

    def walk_one(node: ast.AST) -> Iterator[tuple[str, str, int]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                yield module, alias.name, node.lineno
        yield from walk(node)

    yield from walk(ast.parse(path.read_text(encoding="utf-8"), str(path)))


def imported_module(module: str, name: str, known: dict[str, Path]) -> str:
    """The module an import depends on: ``from pkg import sub`` is the module ``pkg.sub`` when
    there is one, else (a name defined in ``pkg``) ``pkg`` itself."""
    if name and f"{module}.{name}" in known:
        return f"{module}.{name}"
    return module


def core_graph() -> dict[str, dict[str, int]]:
    """``module -> {imported core module: line}`` over every module of ``core/``."""
    known = modules("transferkit")
    graph: dict[str, dict[str, int]] = {}
    for name, path in known.items():
        edges = graph.setdefault(name, {})
        for module, imported, line in imports(name, path):
            target = imported_module(module, imported, known)
            if target in known and target != name:
                edges.setdefault(target, line)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # the graph is small: recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def test_the_import_reader_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    module = tmp_path / "mod.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import near\n"
        "from .. import far as _far\n"
        "if TYPE_CHECKING:\n"
        "    from .hidden import Only\n"
        "else:\n"
        "    import shown\n"
        "def later():\n"
        "    from .inner import thing\n"
        "    import transferkit.plugins.x\n"
    )
    found = {(m, n) for m, n, _ in imports("transferkit.jobs.mod", module)}
    assert found == {
        ("typing", "TYPE_CHECKING"),
        ("transferkit.jobs", "near"),
        ("transferkit", "far"),
        ("shown", ""),
        ("transferkit.jobs.inner", "thing"),
        ("transferkit.plugins.x", ""),
    }
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}, "e": {"e": 5}}
    assert circles(graph) == [["a", "b", "c"]]


def test_no_import_circle_between_the_files_of_core() -> None:
    graph = core_graph()
    assert len(graph) > 40 and "transferkit.registry" in graph["transferkit.store.backend"]  # lazy
    found = circles(graph)
    described = [
        " ; ".join(
            f"{a} -> {b} (line {graph[a][b]})" for a in group for b in graph[a] if b in group
        )
        for group in found
    ]
    assert not found, "import circles in core/:\n" + "\n".join(described)


def test_core_never_imports_a_plugin_module() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for name, path in modules("transferkit").items()
        for module, imported, line in imports(name, path)
        if (f"{module}.{imported}" if imported else module).startswith("transferkit.plugins")
    ]
    assert not bad, "core/ names plugin modules only in DEFAULT_PLUGINS:\n" + "\n".join(bad)


def test_built_in_plugins_import_only_public_names_of_transferkit() -> None:
    host = modules("transferkit")
    bad = []
    for name, path in modules("transferkit.plugins").items():
        for module, imported, line in imports(name, path):
            if module.startswith("transferkit.plugins") or not (
                module == "transferkit" or module.startswith("transferkit.")
            ):
                continue  # the plugin package's own helpers, or another library
            parts = [*module.split("."), *([imported] if imported else [])]
            private = [p for p in parts if p.startswith("_") and not p.startswith("__")]
            if private or (imported == "*"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {'.'.join(parts)}")
            elif imported and module not in host:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports from unknown {module}")
    assert not bad, "built-in plugins use what a third-party plugin could:\n" + "\n".join(bad)
