"""The import layering of dmq: no import cycle among its modules, and a client library
that depends on no server code.

Every module under dmq/ is parsed with `ast`, never imported, and every import
statement counts wherever it is: at module level, under `if TYPE_CHECKING:` (a
type-only cycle is still a cycle in the design, and becomes a runtime one the day the
name is used at run time) and inside functions (a deferred import hides a cycle, it
does not remove it). An edge goes to the module a statement names: `from a.b import c`
is an edge to `a.b.c` when that is a module, else to `a.b`. Running a package's
`__init__` before its submodule is not counted as an edge: every submodule would form
a cycle with an `__init__` that re-exports it.

Run `pytest tests/unit/test_layering.py` to check both rules; a failure names each new
cycle with the import lines that close it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imports import import_cycles, import_graph

ROOT = Path(__file__).resolve().parents[2]

# Cycles that may exist: none. (The helpers below take an allow-list so the checker's own
# tests can show how a grown cycle is reported.)
ALLOWED_CYCLES: list[frozenset[str]] = []

# What the client library must not import: server code and the node around it.
CLIENT_FORBIDDEN = ("dmq.controller", "dmq.broker", "dmq.kafka", "dmq.ops", "dmq.node",
                    "dmq.roles")


def describe_cycle(graph: dict[str, dict[str, int]], cycle: frozenset[str],
                   allowed: list[frozenset[str]] = ALLOWED_CYCLES) -> str:
    """One closed path through `cycle`, as the import lines that make it, through an
    import that no allowed cycle has (the new one, when a cycle grew)."""
    edges = [(a, b) for a in sorted(cycle) for b in sorted(graph[a]) if b in cycle]
    new = [(a, b) for a, b in edges if not any(a in c and b in c for c in allowed)]
    first, second = (new or edges)[0]
    back: dict[str, str] = {second: second}  # shortest way back from `second` to `first`
    todo = [second]
    while first not in back:
        frontier = []
        for v in todo:
            for w in sorted(graph[v]):
                if w in cycle and w not in back:
                    back[w] = v
                    frontier.append(w)
        todo = frontier
    path = [first]
    while path[-1] != second:
        path.append(back[path[-1]])
    path = [first, *reversed(path)]
    hops = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(path, path[1:], strict=False)]
    return f"{sorted(cycle)}:\n    " + "\n    ".join(hops)


# ---- the rules --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(ROOT, "dmq")


def test_no_import_cycle_beyond_the_allow_list(graph: dict[str, dict[str, int]]) -> None:
    new = [c for c in import_cycles(graph) if c not in ALLOWED_CYCLES]
    assert not new, "import cycles in dmq/ (break them; do not extend the allow-list):\n" + \
        "\n".join(describe_cycle(graph, c) for c in new)


def test_client_imports_no_server_code(graph: dict[str, dict[str, int]]) -> None:
    """Directly or through what it imports (dmq.metadata, dmq.protocol...)."""
    bad = []
    for module in sorted(m for m in graph if m == "dmq.client" or m.startswith("dmq.client.")):
        seen = {module}
        todo = [(module, [module])]
        while todo:
            current, path = todo.pop()
            for target in sorted(graph[current]):
                if target in seen:
                    continue
                seen.add(target)
                if target.startswith(CLIENT_FORBIDDEN):
                    bad.append(" -> ".join([*path, target]))
                else:
                    todo.append((target, [*path, target]))
    assert not bad, "dmq.client reaches server code:\n" + "\n".join(bad)


# ---- the checker itself -----------------------------------------------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, dict[str, int]]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path, "pkg")


def test_type_only_and_deferred_imports_count(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                    "    from pkg.b import B\n",
        "pkg/b.py": "def f():\n    import pkg.c.d\n",
        "pkg/c/__init__.py": "",
        "pkg/c/d.py": "from .. import a\n",
        "pkg/e.py": "import pkg.a\nimport os\n",
    })
    assert graph["pkg.a"] == {"pkg.b": 3}
    assert graph["pkg.b"] == {"pkg.c.d": 2}
    assert graph["pkg.c.d"] == {"pkg.a": 1}
    assert graph["pkg.e"] == {"pkg.a": 1}  # the stdlib is not in the graph
    assert import_cycles(graph) == [frozenset({"pkg.a", "pkg.b", "pkg.c.d"})]
    assert "pkg.c.d (line 1) -> pkg.a" in describe_cycle(graph, import_cycles(graph)[0])


def test_names_from_a_package_go_to_the_module_that_defines_them(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "pkg/__init__.py": "from pkg.m import X\n",
        "pkg/m.py": "X = 1\n",
        "pkg/n.py": "from pkg import m, X\nfrom . import m as again\n",
    })
    # `m` is a module, `X` a name the package re-exports; the package's import of its
    # own submodule is no cycle
    assert graph["pkg.n"] == {"pkg.m": 1, "pkg": 1}
    assert import_cycles(graph) == []


def test_a_function_level_import_closing_a_cycle_is_not_allowed(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/x.py": "import pkg.y\n",
        "pkg/y.py": "def later():\n    from pkg import x\n",
    })
    cycles = import_cycles(graph)
    assert cycles == [frozenset({"pkg.x", "pkg.y"})]
    assert [c for c in cycles if c not in ALLOWED_CYCLES] == cycles


def test_a_cycle_grown_from_an_allowed_one_is_named_by_its_new_import(tmp_path: Path) -> None:
    graph = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/x.py": "import pkg.y\n",
        "pkg/y.py": "import pkg.x\nimport pkg.z\n",
        "pkg/z.py": "import pkg.x\n",
    })
    allowed = [frozenset({"pkg.x", "pkg.y"})]
    (cycle,) = import_cycles(graph)
    assert cycle == {"pkg.x", "pkg.y", "pkg.z"} and cycle not in allowed
    assert describe_cycle(graph, cycle, allowed).splitlines()[1:] == [
        "    pkg.y (line 2) -> pkg.z", "    pkg.z (line 1) -> pkg.x", "    pkg.x (line 1) -> pkg.y"]
