"""benchmarks/: scripts, not tests. Nothing here times anything; it checks that every script
stands on its own (no import from tests/) and answers --help with an example."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").glob("*.py"))


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_benchmark_imports_the_tests(script: Path) -> None:
    bad = sorted(n for n in _imported(script) if n == "tests" or n.startswith("tests."))
    assert not bad, f"{script.name} imports {bad}: shared builders belong in the package or benchmarks/"


@pytest.mark.parametrize("script", [p for p in SCRIPTS if p.name != "common.py"], ids=lambda p: p.name)
def test_every_script_answers_help_with_an_example(script: Path) -> None:
    res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, check=False)
    assert res.returncode == 0, res.stderr
    assert "example" in res.stdout.lower(), res.stdout[-500:]
    if script.name != "bench_metrics.py":
        assert "--workdir" in res.stdout or "--profile" in res.stdout
