"""The cleaner works on a log through its public interface
(`dmq.log.cleaner.CleanableLog`) only, and the replacement-file sweep belongs to
recovery. (No import cycle among dmq.log's modules: tests/unit/test_layering.py checks
that for all of dmq.)

Every import counts: at module level, inside a function, or under `TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dmq.log
from tests.support.imports import import_graph

LOG_DIR = Path(dmq.log.__file__).parent
ROOT = LOG_DIR.parents[1]


def _log_imports() -> dict[str, set[str]]:
    """dmq.log module (short name) -> the dmq.log modules it imports."""
    graph = import_graph(ROOT, "dmq")
    short = {m: m.removeprefix("dmq.log.") for m in graph if m.startswith("dmq.log.")}
    return {short[m]: {short[t] for t in edges if t in short} for m, edges in graph.items()
            if m in short}


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
