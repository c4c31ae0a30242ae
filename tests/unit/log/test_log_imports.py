"""The modules of dmq.log import each other without a cycle, and the cleaner works on a
log through its public interface (`dmq.log.cleaner.CleanableLog`) only.

Every import counts: at module level, inside a function, or under `TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dmq.log

LOG_DIR = Path(dmq.log.__file__).parent


def _log_imports() -> dict[str, set[str]]:
    """dmq.log module -> the dmq.log modules it imports."""
    modules = {p.stem: p for p in LOG_DIR.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                if parts[:2] == ["dmq", "log"] and len(parts) > 2 and parts[2] in modules:
                    deps.add(parts[2])
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph`, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for dep in sorted(graph[node]):
            found = visit(dep, path + [node])
            if found is not None:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found is not None:
            return found
    return None


def test_the_log_modules_import_each_other_without_a_cycle() -> None:
    graph = _log_imports()
    assert {"cleaner", "recovery", "partition_log", "batch", "kafka_records"} <= set(graph)
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cleaner_does_not_import_the_log_and_recovery_does_not_import_the_cleaner() -> None:
    graph = _log_imports()
    assert "partition_log" not in graph["cleaner"]
    assert "cleaner" not in graph["recovery"] and "cleaner" not in graph["migrate"]


def test_the_cleaner_uses_no_private_member_of_another_object() -> None:
    tree = ast.parse((LOG_DIR / "cleaner.py").read_text())
    private = sorted({f"{ast.unparse(n.value)}.{n.attr}" for n in ast.walk(tree)
                      if isinstance(n, ast.Attribute) and n.attr.startswith("_")
                      and not n.attr.startswith("__")
                      and not (isinstance(n.value, ast.Name) and n.value.id == "self")})
    assert private == []
