"""Paired comparison of two evaluations: McNemar's exact test against scipy and statsmodels,
the paired-bootstrap differences against a brute-force loop, intervals that shrink with more
samples and with correlated runs, joining by sample, and `tokcal compare` on real local-store
runs (in a subprocess) and on a real MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tokcal.cli.main import main
from tokcal.core.bootstrap import HEADLINE, resample_indices
from tokcal.core.compare import (
    A_BETTER,
    B_BETTER,
    NO_DIFFERENCE,
    compare_records,
    mcnemar_exact,
)
from tokcal.core.metrics import compute_metrics
from tokcal.core.per_sample import PerSample
from tokcal.errors import TokcalError
from tokcal.trackers import open_tracker

LABELS = ["Accept", "Reject"]
ROOT = Path(__file__).resolve().parents[1]


def pair(seed: int, n: int, *, rho: float = 0.5, gain: float = 0.0, ids: bool = False):
    """Two evaluations of n samples: logits of the true label share a per-sample part
    (correlation ``rho``); B's are shifted by ``gain``."""
    rng = np.random.default_rng(seed)
    gt = (rng.random(n) < 0.4).astype(int)
    common = rng.normal(1.0, 1.5, n)
    za = np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(1.0, 1.5, n)
    zb = np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.normal(1.0, 1.5, n) + gain
    recs = []
    for z in (za, zb):
        q_true = 1 / (1 + np.exp(-z))
        p = np.empty((n, 2))
        p[np.arange(n), gt] = q_true * 0.9
        p[np.arange(n), 1 - gt] = (1 - q_true) * 0.9
        recs.append(PerSample(LABELS, np.arange(n), gt, p, ids=[f"paper-{i}" for i in range(n)] if ids else None))
    return recs


@pytest.mark.parametrize("a_only,b_only", [(0, 0), (0, 5), (3, 4), (12, 25), (40, 18), (1, 60), (200, 230)])
def test_mcnemar_matches_scipy_and_statsmodels(a_only, b_only):
    from scipy.stats import binomtest

    a = np.r_[np.ones(a_only), np.zeros(b_only), np.ones(17), np.zeros(9)]
    b = np.r_[np.zeros(a_only), np.ones(b_only), np.ones(17), np.zeros(9)]
    t = mcnemar_exact(a, b)
    assert (t.both_right, t.a_only, t.b_only, t.both_wrong) == (17, a_only, b_only, 9)
    n = a_only + b_only
    ref = 1.0 if n == 0 else binomtest(b_only, n, 0.5).pvalue
    assert t.p_value == pytest.approx(ref, rel=1e-12)
    sm = pytest.importorskip("statsmodels.stats.contingency_tables")
    res = sm.mcnemar(np.array([[17, a_only], [b_only, 9]]), exact=True)
    assert t.p_value == pytest.approx(res.pvalue, rel=1e-12)


def test_paired_differences_equal_a_brute_force_loop():
    a, b = pair(1, 120, gain=0.4)
    c = compare_records(a, b, n_resamples=150, seed=5)
    names = [r.metric for r in c.rows]
    assert names == list(HEADLINE)
    diffs = {m: [] for m in names}
    for idx in resample_indices(a.gt, 150, seed=5):
        for rows in idx:
            ma = compute_metrics(a.probs[rows], a.gt[rows], LABELS).scalars
            mb = compute_metrics(b.probs[rows], b.gt[rows], LABELS).scalars
            for m in names:
                key = f"eval_{HEADLINE[m][0]}"
                diffs[m].append(mb[key] - ma[key])
    full_a = compute_metrics(a.probs, a.gt, LABELS).scalars
    full_b = compute_metrics(b.probs, b.gt, LABELS).scalars
    for r in c.rows:
        key = f"eval_{HEADLINE[r.metric][0]}"
        lo, hi = np.percentile(diffs[r.metric], [2.5, 97.5])
        assert r.low == pytest.approx(lo, rel=1e-9, abs=1e-12) and r.high == pytest.approx(hi, rel=1e-9, abs=1e-12)
        assert r.a == pytest.approx(full_a[key], rel=1e-9) and r.b == pytest.approx(full_b[key], rel=1e-9)


def _width(a, b, metric="brier"):
    r = compare_records(a, b, n_resamples=400, metrics=[metric]).row(metric)
    return r.high - r.low


def test_intervals_shrink_with_more_samples_and_with_correlation():
    small, large = _width(*pair(2, 200)), _width(*pair(2, 1800))
    assert large < 0.5 * small  # ~ 1 / sqrt(9) = 1/3
    loose, tight = _width(*pair(3, 600, rho=0.0)), _width(*pair(3, 600, rho=0.95))
    assert tight < 0.5 * loose


def test_verdicts():
    a, b = pair(4, 800, gain=1.5)
    c = compare_records(a, b, n_resamples=300)
    assert c.row("accuracy").verdict == B_BETTER and c.mcnemar.p_value < 0.05
    assert c.mcnemar.b_only > c.mcnemar.a_only
    assert c.row("brier").verdict == B_BETTER and c.row("nll").verdict == B_BETTER
    assert c.row("mass").verdict == NO_DIFFERENCE  # the same mass in both
    back = compare_records(b, a, n_resamples=300)
    assert back.row("accuracy").verdict == A_BETTER and back.row("brier").verdict == A_BETTER
    same = compare_records(a, a, n_resamples=100)
    assert {r.verdict for r in same.rows} == {NO_DIFFERENCE} and same.mcnemar.p_value == 1.0
    assert not same.notes


def test_join_by_sample_and_notes():
    a, b = pair(5, 200, ids=True)
    order = np.random.default_rng(0).permutation(200)[:150]  # B: another order, a quarter missing
    b2 = PerSample(LABELS, b.index[order] + 1000, b.gt[order], b.probs[order], ids=[b.ids[i] for i in order])
    c = compare_records(a, b2, n_resamples=100, metrics=["accuracy", "brier"])
    assert (c.shared, c.only_a, c.only_b) == (150, 50, 0)  # joined by id, whatever the positions
    keep = np.sort(order)
    ref = compare_records(PerSample(LABELS, keep, a.gt[keep], a.probs[keep]),
                          PerSample(LABELS, keep, b.gt[keep], b.probs[keep]), n_resamples=100,
                          metrics=["accuracy", "brier"])
    assert c.row("brier").diff == pytest.approx(ref.row("brier").diff, rel=1e-12)
    assert c.mcnemar == ref.mcnemar
    assert any("only in A" in n for n in c.notes)
    few = compare_records(a, PerSample(LABELS, b.index[:12], b.gt[:12], b.probs[:12], ids=b.ids[:12]),
                          n_resamples=50, metrics=["accuracy"])
    assert few.shared == 12 and any("share only 12 samples" in n for n in few.notes)


def test_errors():
    a, b = pair(6, 50)
    with pytest.raises(TokcalError, match="disagree on the true label of 50 of 50"):
        compare_records(a, PerSample(LABELS, b.index, 1 - b.gt, b.probs))
    with pytest.raises(TokcalError, match="share no sample"):
        compare_records(a, PerSample(LABELS, b.index + 100, b.gt, b.probs))
    with pytest.raises(TokcalError, match="same labels"):
        compare_records(a, PerSample(["Yes", "No"], b.index, b.gt, b.probs))
    with pytest.raises(TokcalError, match="expected metrics among"):
        compare_records(a, b, metrics=["ece", "f1"])


# ------------------------------------------------------------------ real runs, the CLI


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two simulated runs with per-sample records in a real local store (one folder each)."""
    from tokcal.demo.simulated import simulate_run

    root = tmp_path_factory.mktemp("compare")
    runs = {}
    for name, seed, skill in (("a", 1, 0.7), ("b", 1, 1.4)):
        with open_tracker("local", local_dir=root / name) as tracker:
            runs[name] = (root / name / tracker.run_id, simulate_run(tracker, seed=seed, steps=[100, 200, 300],
                                                                      n=300, skill=skill, text=False))
    return runs


def test_compare_local_runs_in_a_subprocess(store):
    (a_dir, sim_a), (b_dir, sim_b) = store["a"], store["b"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "tokcal", "compare", str(a_dir), str(b_dir), "--step", "250", "--resamples", "300"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    ref = compare_records(sim_a.records[200], sim_b.records[200], n_resamples=300)
    assert "@ step 200" in text and f"{ref.shared} shared samples" in text
    for r in ref.rows:
        line = next(ln for ln in text.splitlines() if ln.startswith(
            {"accuracy": "accuracy (", "balanced_accuracy": "balanced accuracy", "ece": "ECE", "smece": "smooth ECE",
             "brier": "Brier", "nll": "NLL", "auroc": "AUROC", "mass": "mass"}[r.metric]))
        assert f"{r.a:.4f}" in line and f"{r.b:.4f}" in line and f"{r.low:+.4f} to {r.high:+.4f}" in line
        assert r.verdict in line
    m = ref.mcnemar
    assert f"only in A {m.a_only}, only in B {m.b_only}" in text


def test_compare_two_steps_of_one_run_and_metric_choice(store, capsys):
    a_dir, sim = store["b"]
    assert main(["compare", str(a_dir), "--step", "100", "300", "--metric", "accuracy", "ece",
                 "--resamples", "100"]) == 0
    text = capsys.readouterr().out
    ref = compare_records(sim.records[100], sim.records[300], n_resamples=100, metrics=["accuracy", "ece"])
    assert "@ step 100" in text and "@ step 300" in text
    acc = next(ln for ln in text.splitlines() if ln.startswith("accuracy ("))
    assert f"{ref.row('accuracy').verdict} (exact test)" in acc
    assert f"p = {ref.mcnemar.p_value:.3g}" in text
    assert "Brier" not in text and "smooth ECE" not in text


def test_compare_cli_help_and_errors(store, capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    help_text = capsys.readouterr().out
    assert "examples:" in help_text and "tokcal compare" in help_text and "--step" in help_text
    a_dir = store["a"][0]
    assert main(["compare", str(a_dir)]) == 2
    assert "expected a second source, or two steps" in capsys.readouterr().err
    assert main(["compare", str(a_dir), str(store["b"][0]), "--step", "50"]) == 2
    err = capsys.readouterr().err
    assert "no evaluation at or before step 50" in err and len(err.strip().splitlines()) == 1
    assert main(["compare", str(a_dir.parent.parent / "a"), str(store["b"][0]), "--step", "1", "2", "3"]) == 2
    assert "expected --step to give one or two steps" in capsys.readouterr().err


def test_report_table_has_intervals_and_differences(store, tmp_path):
    from tokcal.core.bootstrap import confidence_intervals

    (a_dir, sim_a), (b_dir, sim_b) = store["a"], store["b"]
    out = tmp_path / "r.html"
    assert main(["report", str(a_dir), str(b_dir), "--output", str(out), "--no-step-figures"]) == 0
    text = out.read_text(encoding="utf-8")
    table = text.split("id=compare-table>")[1].split("</table>")[0]
    ci_b = confidence_intervals(sim_b.records[300])
    c = compare_records(sim_a.records[300], sim_b.records[300])
    row = table.split('data-metric="decision_brier">')[1].split("</tr>")[0]
    assert f"[{ci_b['brier'].low:.3f}, {ci_b['brier'].high:.3f}]" in row
    r = c.row("brier")
    assert f"{r.diff:+.3f} [{r.low:+.3f}, {r.high:+.3f}]" in row
    assert 'data-metric="decision_smece"' in table


def test_compare_runs_on_a_real_mlflow_server(mlflow_server, monkeypatch, capsys):
    from tokcal.demo.simulated import simulate_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ids, sims = [], []
    for seed, skill in ((8, 0.8), (8, 1.3)):
        tracker = open_tracker("mlflow", tracking_uri=mlflow_server, experiment="tokcal-compare", spool=False)
        sims.append(simulate_run(tracker, seed=seed, steps=[50, 100], n=120, skill=skill, text=False))
        ids.append(tracker.run_id)
        tracker.close()
    assert main(["compare", f"mlflow:{ids[0]}", f"mlflow:{ids[1]}", "--tracking-uri", mlflow_server,
                 "--resamples", "200"]) == 0
    text = capsys.readouterr().out
    ref = compare_records(sims[0].records[100], sims[1].records[100], n_resamples=200)
    for r in ref.rows:
        assert f"{r.low:+.4f} to {r.high:+.4f}" in text
    assert f"only in A {ref.mcnemar.a_only}, only in B {ref.mcnemar.b_only}" in text
