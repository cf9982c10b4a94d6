"""The public API (``tracking``) and the examples in the docstrings."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

import tracking


def test_import_is_cheap_and_names_load_on_use() -> None:
    code = ("import sys, tracking\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)\n"
            "from tracking import DecisionSpec, TrackingSettings\n"
            "assert 'torch' not in sys.modules\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("name", tracking.__all__)
def test_every_public_name_resolves(name: str) -> None:
    obj = getattr(tracking, name)
    assert obj.__name__ == name
    assert name in dir(tracking)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tracking.nope  # noqa: B018


def test_public_compute_metrics_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=200)[:, :2]
    gt = rng.integers(0, 2, size=200)
    m = tracking.compute_metrics(probs, gt, tracking.DecisionSpec().labels)
    assert m.scalars["eval_decision_accuracy"] == pytest.approx(accuracy_score(gt, probs.argmax(1)))


def _modules() -> list[str]:
    names = ["tracking", "callbacks"]
    for pkg in (tracking, importlib.import_module("callbacks")):
        names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    return sorted(names)


@pytest.mark.parametrize("module", _modules())
def test_docstring_examples_run(module: str) -> None:
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {module}"


def test_all_lists_every_export() -> None:
    from tracking import _EXPORTS

    assert sorted(tracking.__all__) == sorted(_EXPORTS)
