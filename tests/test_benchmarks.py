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


def test_engine_benchmark_loads_no_engine_for_help_or_bad_flags() -> None:
    """bench_engines.py answers --help and refuses unknown engines without importing vLLM or
    torch (it runs where vLLM is not installed too: make bench-vllm builds that venv)."""
    script = ROOT / "benchmarks" / "bench_engines.py"
    probe = ("import runpy, sys\n"
             "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
             "try:\n"
             "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as exc:\n"
             "    print('EXIT', exc.code if isinstance(exc.code, int) or exc.code is None else 'message', file=sys.stderr)\n"
             "    if not isinstance(exc.code, (int, type(None))):\n"
             "        print(exc.code, file=sys.stderr)\n"
             "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch', 'psutil')))\n")
    for args, code in ((["--help"], "EXIT 0"), (["--engines", "hf,tgi"], "EXIT message")):
        res = subprocess.run([sys.executable, "-c", probe, str(script), *args], capture_output=True, text=True,
                             timeout=120, cwd=ROOT, check=False)
        assert code in res.stderr, res.stderr[-800:]
        assert "LOADED []" in res.stdout, res.stdout[-800:]
    assert "expected --engines among hf, vllm, got 'hf,tgi'" in res.stderr


def test_engine_benchmark_shape_has_heads_of_64() -> None:
    """vLLM's CPU attention takes heads of 64 and no smaller: the shape bench_engines.py uses
    by default has them, and is as small as the tiny one otherwise (two layers)."""
    from tokcal.demo.model import build_qwen2

    m = build_qwen2("tiny-h64", vocab_size=1024)
    cfg = m.config
    assert cfg.hidden_size // cfg.num_attention_heads == 64
    assert m.model.layers[0].self_attn.head_dim == 64
    assert cfg.num_hidden_layers == 2 and m.lm_head.out_features == 1024
