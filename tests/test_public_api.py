"""The public API (``tokcal``) and the examples in the docstrings."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

import tokcal


def test_import_is_cheap_and_names_load_on_use() -> None:
    code = ("import sys, tokcal\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n"
            "from tokcal import DecisionSpec, TrackingSettings\n"
            "assert 'torch' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("name", tokcal.__all__)
def test_every_public_name_resolves(name: str) -> None:
    obj = getattr(tokcal, name)
    assert obj.__name__ == name
    assert name in dir(tokcal)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tokcal.nope  # noqa: B018


def test_public_compute_metrics_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=200)[:, :2]
    gt = rng.integers(0, 2, size=200)
    m = tokcal.compute_metrics(probs, gt, tokcal.DecisionSpec().labels)
    assert m.scalars["eval_decision_accuracy"] == pytest.approx(accuracy_score(gt, probs.argmax(1)))


def _modules() -> list[str]:
    names = ["tokcal", "tokcal.callbacks"]
    for pkg in (tokcal, importlib.import_module("tokcal.callbacks")):
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    return sorted(names)


@pytest.mark.parametrize("module", _modules())
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {module}"


def test_all_lists_every_export() -> None:
    from tokcal import _EXPORTS

    assert sorted(tokcal.__all__) == sorted(_EXPORTS)
