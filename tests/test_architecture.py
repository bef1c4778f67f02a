"""The house rules, checked on every run: imports flow one way with no cycle (import-linter contracts in
pyproject.toml), and the dependencies are declared exactly as imported (deptry)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False, env={"PATH": str(BIN), "NO_COLOR": "1", "HOME": str(ROOT)})


def test_imports_follow_the_layers_with_no_cycle():
    result = run("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "3 kept" in result.stdout


def test_dependencies_are_declared_exactly_as_imported():
    result = run("deptry", ".")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No dependency issues found" in result.stdout + result.stderr
