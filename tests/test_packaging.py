"""One import name: the wheel installs ``tokcal`` and nothing else at the top level, and the
README's snippet works from a folder that has its own ``callbacks.py`` and ``tracking/``."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = {"tracking": "tokcal", "callbacks": "tokcal.callbacks"}  # pyproject's package-dir


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH, so only installed packages are importable."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_package_list_names_every_source_folder() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert {folder: package for package, folder in tool["package-dir"].items()} == SOURCE_FOLDERS
    expected = set()
    for folder, package in SOURCE_FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            expected.add(".".join([package, *rel]))
    assert set(tool["packages"]) == expected


@pytest.mark.slow
def test_wheel_installs_only_tokcal_at_the_top_level(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("tokcal-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"tokcal", next(t for t in top if t.endswith(".dist-info"))}, sorted(top)
    for folder, package in SOURCE_FOLDERS.items():  # every module of both folders is in it
        for path in (ROOT / folder).rglob("*.py"):
            inside = "/".join([*package.split("."), *path.relative_to(ROOT / folder).parts])
            assert inside in names, f"{path} is missing from the wheel as {inside}"
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "tokcal = tokcal.cli.main:main" in entry


def test_snippet_beside_a_users_own_callbacks_and_tracking(tmp_path: Path) -> None:
    """A training folder with its own ``callbacks.py`` and ``tracking/`` package: both the
    user's modules and tokcal import, each under its own name."""
    (tmp_path / "callbacks.py").write_text("MINE = 'callbacks'\n", encoding="utf-8")
    (tmp_path / "tracking").mkdir()
    (tmp_path / "tracking" / "__init__.py").write_text("MINE = 'tracking'\n", encoding="utf-8")
    (tmp_path / "train.py").write_text(
        "import callbacks, tracking\n"
        "from tokcal import DecisionSpec, DecisionTrackingCallback\n"
        "cb = DecisionTrackingCallback(DecisionSpec(labels=('Yes', 'No')), backend='local')\n"
        "print(callbacks.MINE, tracking.MINE, type(cb).__module__, cb.settings.spec.labels)\n",
        encoding="utf-8")
    out = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, env=_clean_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["callbacks", "tracking", "tokcal.callbacks.decision", "('Yes',", "'No')"]


def test_python_dash_m_tokcal_runs_the_cli(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "tokcal", "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=_clean_env())
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: tokcal" in out.stdout
