"""The static checks the project holds itself to, run with the suite so CI enforces
them: mypy in strict mode over dmq/ (pyproject.toml [tool.mypy]) and ruff over dmq/,
tests/ and benchmarks/ (pyproject.toml [tool.ruff])."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (it is in the test extra)")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_mypy_strict_passes_on_dmq() -> None:
    out = _run("mypy", "dmq")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_passes() -> None:
    out = _run("ruff", "check", "dmq", "tests", "benchmarks")
    assert out.returncode == 0, out.stdout + out.stderr
