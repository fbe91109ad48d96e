"""The floors of ``docs/architecture.md``, enforced by reading the imports of every module (with
``ast``, nothing is imported): no import circle between the files of ``core/``, no ``core/``
module importing a ``transferkit.plugins`` module, and the declared plugin API: a built-in plugin
or ``plugin_template/`` imports from ``transferkit`` and ``transferkit.plugin`` only the names in
their ``__all__`` (read by importing those two light modules), and nothing else of the host but
its own package; so nothing private, nothing a third-party plugin could not rely on either.

Every import counts, a function's included (a lazy import is still a dependency), except those
under ``if TYPE_CHECKING:``, which never run."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_faults import python_output

ROOT = Path(__file__).resolve().parents[1]
# the import names of the two packages: core/ installs as transferkit, plugins/ as its .plugins
PACKAGES = {"transferkit": ROOT / "core", "transferkit.plugins": ROOT / "plugins"}
# the host modules a plugin may import from (the names in their __all__)
PLUGIN_API = ("transferkit", "transferkit.plugin")


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


def exported_names() -> dict[str, set[str]]:
    """The names a plugin may import from each module of :data:`PLUGIN_API`."""
    import transferkit
    import transferkit.plugin

    return {
        "transferkit": {*transferkit.__all__, "plugin"},  # `from transferkit import plugin`
        "transferkit.plugin": set(transferkit.plugin.__all__),
    }


def undeclared_imports(name: str, path: Path, own: str | None) -> list[str]:
    """``file:line`` lines for each import in ``path`` of a host name outside the declared plugin
    API; ``own`` is the plugin's own package (its helpers are its own business)."""
    exported = exported_names()
    allowed = ", ".join(PLUGIN_API)
    bad = []
    for module, imported, line in imports(name, path):
        if not (module == "transferkit" or module.startswith("transferkit.")):
            continue  # another library
        if own and (module == own or module.startswith(own + ".")):
            continue
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
        what = f"{module}.{imported}" if imported else module
        if module not in exported:
            bad.append(f"{where} imports {what}: a plugin imports only from {allowed}")
        elif imported == "*" or (imported and imported not in exported[module]):
            bad.append(f"{where} imports {what}, which is not in {module}.__all__")
    return bad


def test_the_plugin_api_check_names_file_line_and_the_allowed_modules(tmp_path: Path) -> None:
    module = tmp_path / "plug.py"
    module.write_text(
        "import transferkit\n"
        "import transferkit.plugin\n"
        "from transferkit import BackboneSpec, hookimpl, plugin\n"
        "from transferkit.plugin import FeatureStore, get_spec\n"
        "from transferkit.plugins._backbone_utils import load_local_weights\n"
        "from transferkit import registry\n"
        "from transferkit.plugin import _NAMES\n"
        "def later():\n"
        "    from transferkit.images import ImageSource\n"
        "    import transferkit.trainer.layers\n"
    )
    assert undeclared_imports("transferkit.plugins.plug", module, "transferkit.plugins") == [
        f"{module}:6 imports transferkit.registry, which is not in transferkit.__all__",
        f"{module}:7 imports transferkit.plugin._NAMES, which is not in transferkit.plugin.__all__",
        f"{module}:9 imports transferkit.images.ImageSource: a plugin imports only from "
        "transferkit, transferkit.plugin",
        f"{module}:10 imports transferkit.trainer.layers: a plugin imports only from "
        "transferkit, transferkit.plugin",
    ]
    # the template has no share in the built-ins' package
    assert len(undeclared_imports("plug", module, None)) == 5


def plugin_modules() -> list[tuple[str, Path, str | None]]:
    """``(module name, path, own package)`` of every built-in plugin and the template's files."""
    found: list[tuple[str, Path, str | None]] = [
        (name, path, "transferkit.plugins") for name, path in modules("transferkit.plugins").items()
    ]
    template = ROOT / "plugin_template"
    for path in sorted(template.rglob("*.py")):
        parts = path.relative_to(template).parts
        if any(p == "build" or p.startswith(".") or p.endswith(".egg-info") for p in parts):
            continue  # what building or installing it leaves
        name = ".".join(path.relative_to(template).with_suffix("").parts)
        found.append((name, path, None))
    return found


def test_built_in_plugins_and_the_template_import_only_the_declared_api() -> None:
    found = plugin_modules()
    assert any(p.name == "transferkit_example.py" for _, p, _ in found)
    bad = [line for name, path, own in found for line in undeclared_imports(name, path, own)]
    assert not bad, (
        "a plugin imports from transferkit and transferkit.plugin (the names in their __all__) "
        "and from its own package, nothing else:\n" + "\n".join(bad)
    )


def test_core_never_imports_the_plugin_api_module() -> None:
    """``transferkit.plugin`` faces the plugins, above every floor: no circle can pass by it."""
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for name, path in modules("transferkit").items()
        if name != "transferkit.plugin"
        for module, imported, line in imports(name, path)
        if module == "transferkit.plugin" or (module == "transferkit" and imported == "plugin")
    ]
    assert not bad, "\n".join(bad)


def test_the_plugin_api_declares_for_type_checkers_what_it_loads() -> None:
    """``transferkit.plugin``'s ``if TYPE_CHECKING:`` imports (what mypy and editors see) are
    exactly its ``__all__``, and each comes from the module its lazy table loads it from."""
    import transferkit.plugin

    tree = ast.parse((ROOT / "core" / "plugin.py").read_text(encoding="utf-8"))
    seen: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.body:
                assert isinstance(child, ast.ImportFrom) and child.level == 1
                for alias in child.names:
                    seen[alias.asname or alias.name] = (child.module or "", alias.name)
    assert sorted(seen) == sorted(transferkit.plugin.__all__)
    assert seen == transferkit.plugin._NAMES


@pytest.mark.process
def test_the_plugin_api_loads_lazily_and_every_name_resolves() -> None:
    """In a fresh process: importing ``transferkit.plugin``, listing it and touching every name
    but the Keras layers imports neither TensorFlow nor Keras; then every name resolves."""
    code = (
        "import sys\n"
        "import transferkit.plugin as api\n"
        "layers = {'PoolIfMap', 'GradientScale', 'ImagePreprocessing'}\n"
        "assert set(api.__all__) <= set(dir(api)), set(api.__all__) - set(dir(api))\n"
        "light = [getattr(api, n) for n in api.__all__ if n not in layers]\n"
        "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
        "missing = [n for n in api.__all__ if getattr(api, n, None) is None]\n"
        "import keras\n"
        "bad = [n for n in layers if not issubclass(getattr(api, n), keras.layers.Layer)]\n"
        "print('missing', missing, 'not layers', bad)\n"
    )
    out = python_output(code).splitlines()
    assert out[-2:] == ["TF False False", "missing [] not layers []"], out
