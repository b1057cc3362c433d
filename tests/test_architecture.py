"""The package structure, checked: what may import what among llmtap's own modules.

The rules (layers, self-contained providers, addons that never import one another, no import
cycle, a settings module light enough for the CLI's fast paths) decay silently: each violation
is one convenient import that every other test happily runs. So the import graph is built from
the sources with :mod:`ast` (no import-linter dependency) and the rules are checked on it.

What counts as an import (:func:`import_graph`):

* every ``import`` and ``from ... import`` statement of a module, at module level and inside
  functions and classes alike: a deferred import still couples the two modules, and still
  closes a cycle the day someone hoists it;
* except those in an ``if TYPE_CHECKING:`` block (its ``else:`` branch does count): they never
  run, and annotations are exactly what such a block is for;
* ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
  relative imports are resolved against the importing module's package;
* only edges between modules of :data:`PACKAGES` are kept, and dynamic imports
  (``importlib.import_module``, as the provider registry does) are not seen.

Each rule is also checked against a small synthetic tree or graph, so a rule that could never
fail (a resolver that drops edges, a cycle finder that finds nothing) fails here instead.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("collector", "analytics", "app")
ADDONS = "collector.proxy.addons"
PROVIDERS = "collector.providers"
Graph = Mapping[str, set[str]]


# -- the graph -------------------------------------------------------------------------------


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``packages`` under ``root``
    (a package is named by its ``__init__.py``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def _known(name: str, modules: Mapping[str, Path]) -> str | None:
    """``name``, or its longest prefix that is a known module (``import a.b.c`` where ``c`` is
    not a module of ours still imports ``a.b``); None outside our packages."""
    parts = name.split(".")
    for depth in range(len(parts), 0, -1):
        candidate = ".".join(parts[:depth])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, modules: Mapping[str, Path]) -> set[str]:
    """The known modules that ``module`` imports (see the module docstring for what counts)."""
    path = modules[module]
    # The package a relative import starts from: a package's own name, a module's parent.
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        target = _known(name, modules)
        if target is not None and target != module:
            found.add(target)

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            assert isinstance(node, ast.If)
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                assert node.module is not None
                base = node.module
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the known modules it imports, for every module of ``packages``."""
    modules = module_files(root, packages)
    return {module: imports_of(module, modules) for module in modules}


def cycles(graph: Graph) -> list[list[str]]:
    """One shortest cycle (``[a, b, ..., a]``) through each strongly connected component that
    has one, found with Tarjan's algorithm (iterative: the graph may be deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    found = []
    for component in components:
        members = set(component)
        first = min(component)
        if len(component) == 1 and first not in graph.get(first, ()):
            continue
        # Breadth-first from `first` inside the component, back to `first`: a shortest cycle.
        previous: dict[str, str] = {}
        frontier = [first]
        while first not in previous:
            step = []
            for node in frontier:
                for child in sorted(graph.get(node, ())):
                    if child in members and child not in previous:
                        previous[child] = node
                        step.append(child)
            frontier = step
        path = [first]
        node = previous[first]
        while node != first:
            path.append(node)
            node = previous[node]
        path.append(first)
        found.append(path[::-1])
    return found


def forbidden_edges(
    graph: Graph, importer: Callable[[str], bool], imported: Callable[[str, str], bool]
) -> list[str]:
    """``a -> b`` for each edge whose ``importer(a)`` and ``imported(a, b)`` both hold."""
    return [
        f"{source} -> {target}"
        for source in sorted(graph)
        if importer(source)
        for target in sorted(graph[source])
        if imported(source, target)
    ]


def within(package: str) -> Callable[[str], bool]:
    """Whether a module is ``package`` or one of its submodules."""
    return lambda module: module == package or module.startswith(package + ".")


def modules_loaded(module: str, watched: Iterable[str], path: Path = ROOT) -> list[str]:
    """Which of ``watched`` a fresh interpreter has in ``sys.modules`` once it imported
    ``module`` (with ``path`` first on ``sys.path``)."""
    code = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {str(path)!r})\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps([m for m in {list(watched)!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- llmtap's rules --------------------------------------------------------------------------

GRAPH = import_graph()


def _addon(module: str) -> bool:
    return module.startswith(ADDONS + ".")


def test_no_import_cycle():
    found = cycles(GRAPH)
    assert not found, "import cycles among llmtap's modules:\n" + "\n".join(" -> ".join(c) for c in found)


def test_addons_do_not_import_each_other():
    """An addon is one mitmproxy hook set, assembled with the others by the server: what two
    addons share lives outside the folder, so each can be tested, ordered and removed alone.
    The folder's ``__init__`` counts as an addon module (importing it is importing the folder)."""
    bad = forbidden_edges(GRAPH, within(ADDONS), lambda source, target: within(ADDONS)(target))
    assert not bad, "addons importing another module of collector/proxy/addons/:\n" + "\n".join(bad)


def test_layers():
    """collector (the proxy) < analytics (queries on the store) < app (CLI, dashboard): the
    proxy must run without the query layer or the UI, and analytics without the app."""
    bad = forbidden_edges(
        GRAPH, within("collector"), lambda _, target: within("analytics")(target) or within("app")(target)
    ) + forbidden_edges(GRAPH, within("analytics"), lambda _, target: within("app")(target))
    assert not bad, "imports against the layers (collector < analytics < app):\n" + "\n".join(bad)


def test_providers_are_self_contained():
    """A provider module only parses a provider's wire format: it may use its siblings
    (``base``, the OpenAI family), never the proxy, the storage or the settings."""
    bad = forbidden_edges(
        GRAPH,
        within(PROVIDERS),
        lambda _, target: within("collector")(target) and not within(PROVIDERS)(target),
    )
    assert not bad, "provider modules importing collector outside collector.providers:\n" + "\n".join(bad)


def test_settings_load_neither_duckdb_nor_mitmproxy():
    """Reading the config is the first thing every CLI command does: it must not pay for the
    database engine or the proxy (seconds of import time, and native libraries)."""
    loaded = modules_loaded("collector.settings.config", ["duckdb", "mitmproxy"])
    assert not loaded, f"importing collector.settings.config loads {loaded}"


# -- the checks themselves, on synthetic cases -----------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_graph_resolution_on_a_synthetic_tree(tmp_path):
    _tree(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.base import VALUE\n",
            "pkg/base.py": "VALUE = 1\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/a.py": (
                "from __future__ import annotations\n"
                "from typing import TYPE_CHECKING\n"
                "import os\n"
                "from pkg import base\n"  # a module: the edge goes to pkg.base
                "from pkg import VALUE\n"  # a name: the edge goes to pkg
                "from . import b\n"
                "if TYPE_CHECKING:\n"
                "    from pkg.sub import hidden\n"
                "else:\n"
                "    from pkg.sub import c\n"
                "def late():\n"
                "    from ..other import thing\n"
            ),
            "pkg/sub/b.py": "import pkg.sub.c.missing\n",  # not a module: its longest known prefix
            "pkg/sub/c.py": "",
            "pkg/sub/hidden.py": "",
            "pkg/other.py": "thing = 1\n",
        },
    )
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.sub.a"] == {"pkg.base", "pkg", "pkg.sub.b", "pkg.sub.c", "pkg.other"}
    assert graph["pkg.sub.b"] == {"pkg.sub.c"}
    assert graph["pkg"] == {"pkg.base"}
    assert graph["pkg.sub"] == set()


def test_cycle_finder_on_synthetic_graphs():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # One cycle per tangle, the shortest through its first module, whatever else hangs off it.
    graph = {"a": {"b", "x"}, "b": {"c"}, "c": {"a", "b"}, "x": set(), "d": {"a"}, "e": {"e"}, "f": {"g"}}
    assert sorted(cycles(graph)) == [["a", "b", "c", "a"], ["e", "e"]]
    # Deeper than the recursion limit: the search is iterative.
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)} | {"m5000": {"m0"}}
    (long_cycle,) = cycles(chain)
    assert len(long_cycle) == 5002


def test_rules_on_a_synthetic_graph():
    graph = {
        "collector.proxy.addons.one": {"collector.proxy.addons.two", "collector.wire.sse"},
        "collector.proxy.addons.two": {"collector.proxy.addons"},
        "collector.providers.x": {"collector.providers.base", "collector.storage.database"},
        "collector.storage.database": {"analytics.metrics"},
        "analytics.metrics": {"app.cli", "collector.storage.database"},
    }
    addons = forbidden_edges(graph, within(ADDONS), lambda _, target: within(ADDONS)(target))
    assert addons == [
        "collector.proxy.addons.one -> collector.proxy.addons.two",
        "collector.proxy.addons.two -> collector.proxy.addons",
    ]
    providers = forbidden_edges(
        graph, within(PROVIDERS), lambda _, t: within("collector")(t) and not within(PROVIDERS)(t)
    )
    assert providers == ["collector.providers.x -> collector.storage.database"]
    assert forbidden_edges(graph, within("analytics"), lambda _, t: within("app")(t)) == [
        "analytics.metrics -> app.cli"
    ]
    assert not within("app")("application")


def test_loaded_modules_check_on_a_synthetic_module(tmp_path):
    _tree(tmp_path, {"heavy.py": "import json\n", "light.py": "VALUE = 1\n"})
    assert modules_loaded("heavy", ["json", "duckdb"], tmp_path) == ["json"]
    assert modules_loaded("light", ["duckdb"], tmp_path) == []
