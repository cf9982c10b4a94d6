"""The layer rule: each layer imports only from the layers below it, and no module imports
itself back through others. Read from the source (every import statement, also those
inside functions), so a lazy import cannot hide a wrong dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own layer and any below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("tokcal.errors", "tokcal.io", "tokcal.config")),
    ("core", ("tokcal.core",)),
    ("data", ("tokcal.data",)),
    ("trackers", ("tokcal.trackers",)),
    ("jobs", ("tokcal.jobs", "tokcal.engines")),
    ("integrations", ("tokcal.callbacks",)),
    ("demo", ("tokcal.demo",)),
    ("cli", ("tokcal.cli", "tokcal.__main__")),
]


def _layer(module: str) -> int | None:
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def _modules() -> dict[str, Path]:
    out = {}
    # the source folder of each package (pyproject.toml's package-dir)
    for folder, package in (("tracking", "tokcal"), ("callbacks", "tokcal.callbacks")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (annotations only, never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    known = _modules()
    return {n for n in names if n in known and n != module}


def _graph() -> dict[str, set[str]]:
    return {m: _imports(p, m) for m, p in _modules().items()}


def test_every_module_has_a_layer() -> None:
    facades = {"tokcal"}  # the public API re-exports lazily, by name
    missing = [m for m in _modules() if m not in facades and _layer(m) is None]
    assert not missing, f"modules outside every layer (add them to LAYERS): {missing}"


def test_layers_import_only_downwards() -> None:
    wrong = []
    for module, imported in _graph().items():
        mine = _layer(module)
        if mine is None:
            continue
        for other in sorted(imported):
            theirs = _layer(other)
            if theirs is not None and theirs > mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {other} ({LAYERS[theirs][0]})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _graph()
    # A package's __init__ is imported with each of its modules; a module importing its own
    # package's __init__ is not a cycle of ours.
    for module in graph:
        graph[module] = {o for o in graph[module] if not module.startswith(o + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check itself can fail: a core module that imports a tracker is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tokcal.trackers.base import Tracker\n", encoding="utf-8")
    imported = _imports(bad, "tokcal.core.bad")
    assert "tokcal.trackers.base" in imported
    assert _layer("tokcal.trackers.base") > _layer("tokcal.core.bad")


@pytest.mark.parametrize("argv", [[], ["extract"], ["backfill"], ["sync"], ["report"], ["train"], ["demo"]])
def test_help_imports_neither_torch_nor_transformers(argv: list[str]) -> None:
    """Nor vLLM (an optional engine), wherever it is installed."""
    code = (
        "import sys\n"
        "from tokcal.cli.main import main\n"
        f"try:\n    main({argv + ['--help']!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: tokcal" in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout[-500:]


def test_no_layer_below_the_integrations_imports_the_public_api() -> None:
    """``tokcal`` (the facade) hands out the Trainer callback, an integration: a module of
    the foundation, core, data, trackers or jobs that imported it would reach up through it."""
    below = {name for name, _ in LAYERS[:LAYERS.index(next(x for x in LAYERS if x[0] == "integrations"))]}
    wrong = sorted(m for m, imported in _graph().items()
                   if _layer(m) is not None and LAYERS[_layer(m)][0] in below and "tokcal" in imported)
    assert not wrong, f"these import the public API (tokcal), which loads the callback: {wrong}"
