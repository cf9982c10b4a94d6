"""`tokcal report`: the same evaluations read back from a local store, a real MLflow server
and `tokcal extract` files, overlaid in one self-contained HTML page that headless Chromium
loads with every image decoded."""

from __future__ import annotations

import html
import json
import re
import shutil

import numpy as np
import pytest

from tests.helpers.browser import check_images, chromium, screenshot  # noqa: F401  (fixture)
from tokcal.cli.main import main
from tokcal.core.metrics import compute_metrics
from tokcal.data.synthetic import review_records
from tokcal.errors import TokcalError
from tokcal.jobs.backfill import MARKER
from tokcal.jobs.report import (
    read_extract,
    read_mlflow,
    read_source,
    read_sources,
    read_wandb,
    step_from_name,
    write_report,
)
from tokcal.trackers import open_tracker

LABELS = ["Accept", "Reject"]


def fake_metrics(step: int, prefix: str = "eval_", n: int = 96):
    """A model that puts more mass on the labels and gets sharper as ``step`` grows."""
    rng = np.random.default_rng(step + 7 * len(prefix))
    gt = rng.integers(0, 2, n)
    mass = min(0.99, 0.01 + step / 100)
    p_true = np.clip(rng.normal(0.5 + 0.4 * min(1.0, step / 80), 0.15, n), 0.01, 0.99)
    probs = np.zeros((n, 2))
    probs[np.arange(n), gt] = p_true * mass
    probs[np.arange(n), 1 - gt] = (1 - p_true) * mass
    return compute_metrics(probs, gt, LABELS, prefix=prefix)


LIVE = [0, 40, 80, 120]
BACKFILLED = [20, 60, 100]


def log_run(tracker) -> dict:
    """Live points, backfilled points in between (marked), and a held-out prefix."""
    logged = {}
    for step in LIVE:
        logged[("eval_", step)] = m = fake_metrics(step)
        tracker.log_evaluation(m, step)
    for step in BACKFILLED:
        logged[("eval_", step)] = m = fake_metrics(step)
        tracker.log_evaluation(m, step, tags=dict(MARKER))
    for step in (0, 120):
        logged[("eval_holdout_", step)] = m = fake_metrics(step, "eval_holdout_")
        tracker.log_evaluation(m, step, tags=dict(MARKER))
    return logged


def assert_same(series, logged) -> None:
    by_prefix = {s.points[0].metrics.prefix: s for s in series}
    assert sorted(by_prefix) == ["eval_", "eval_holdout_"]
    assert by_prefix["eval_"].steps == sorted(LIVE + BACKFILLED)
    assert by_prefix["eval_holdout_"].steps == [0, 120]
    for s in series:
        assert s.labels == LABELS
        for p in s.points:
            want = logged[(p.metrics.prefix, p.step)]
            assert p.backfilled == (p.step in BACKFILLED or p.metrics.prefix == "eval_holdout_")
            for k, v in want.scalars.items():
                if not np.isnan(v):
                    assert p.metrics.scalars[k] == pytest.approx(v, rel=1e-12), k
            for got, exp in ((p.metrics.reliability, want.reliability),
                             (p.metrics.positive_reliability, want.positive_reliability)):
                np.testing.assert_array_equal(got.counts, exp.counts)
                np.testing.assert_allclose(got.accuracy, exp.accuracy)
                np.testing.assert_allclose(got.edges, exp.edges)
            assert sorted(p.metrics.histograms) == sorted(want.histograms)
            for k, h in want.histograms.items():
                np.testing.assert_array_equal(p.metrics.histograms[k].counts, h.counts)


def assert_self_contained(page, n_series_with_steps: int) -> None:
    text = page.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in text and "img-src data:" in text
    assert not re.search(r'(src|href)="(?!data:)', text), "every image must be embedded"
    assert "<link" not in text and "url(" not in text and "@import" not in text
    files = page.with_name(f"{page.stem}_files")
    assert (files / "evolution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len([d for d in files.iterdir() if d.is_dir()]) == n_series_with_steps


def test_local_store(tmp_path, capsys):
    store = tmp_path / "tokcal"
    with open_tracker("local", local_dir=store) as tracker:
        logged = log_run(tracker)
    series = read_sources([str(store)])
    assert_same(series, logged)

    out = tmp_path / "r" / "report.html"
    assert main(["report", str(store), "--output", str(out), "--title", "local"]) == 0
    printed = capsys.readouterr().out
    assert "7 steps (0..120), 3 backfilled" in printed and "2 steps (0..120), 2 backfilled" in printed
    assert_self_contained(out, 2)
    text = out.read_text(encoding="utf-8")
    # comparison (2 series) + evolution + per step (7 + 2): top-label and positive reliability, histograms
    assert text.count("<img") == 2 + 3 * 9
    assert text.count("per-sample-skipped") == 2  # no per-sample records were logged
    assert text.count("backfilled</td>") == 5 and text.count("live</td>") == 4
    per_step = sorted(p.name for p in (out.parent / "report_files").glob("*/step_000020_*.png"))
    assert per_step == ["step_000020_histograms.png", "step_000020_reliability.png",
                        "step_000020_reliability_positive.png"]


def test_mlflow_run(mlflow_server, monkeypatch, tmp_path):
    import mlflow

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    tracker = open_tracker("mlflow", tracking_uri=mlflow_server, experiment="tokcal-report", run_name="rep",
                           spool=False)
    logged = log_run(tracker)
    tracker.close()
    # The Trainer's own eval metrics in the same run are not tokcal's and are left out.
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    client.log_metric(tracker.run_id, "eval_loss", 0.5, step=40)
    client.log_metric(tracker.run_id, "eval_holdout_loss", 0.5, step=40)
    series = read_mlflow(tracker.run_id, mlflow_server)
    assert_same(series, logged)
    assert all("eval_loss" not in p.metrics.scalars and "eval_holdout_loss" not in p.metrics.scalars
               for s in series for p in s.points)
    assert series[0].name == "mlflow rep · eval"
    # The same through the command-line forms: mlflow:ID and a bare run ID.
    assert [s.steps for s in read_source(f"mlflow:{tracker.run_id}", tracking_uri=mlflow_server)] == \
        [s.steps for s in read_source(tracker.run_id, tracking_uri=mlflow_server)]
    with pytest.raises(TokcalError, match="could not open MLflow run 'nope'"):
        read_mlflow("nope", mlflow_server)
    empty = client.create_run(client.get_experiment_by_name("tokcal-report").experiment_id).info.run_id
    with pytest.raises(TokcalError, match="has no tokcal metrics"):
        read_mlflow(empty, mlflow_server)


@pytest.fixture(scope="module")
def extract_files(tmp_path_factory, tiny_bpe_checkpoint):
    """One real `tokcal extract` output (and its --metrics) under two checkpoint names."""
    d = tmp_path_factory.mktemp("extract")
    data = d / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in review_records(24, seed=5)))
    first = d / "checkpoint-100.decisions.jsonl"
    rc = main(["extract", "--checkpoint", str(tiny_bpe_checkpoint), "--data", str(data), "--output", str(first),
               "--metrics", str(d / "metrics.json")])
    assert rc == 0
    (d / "checkpoint-200").mkdir()
    second = d / "checkpoint-200" / "tokcal_decisions.jsonl"  # where `tokcal backfill` writes it
    shutil.copy(first, second)
    return first, second, json.loads((d / "metrics.json").read_text())


def test_extract_files(extract_files, tmp_path):
    first, second, want = extract_files
    assert step_from_name(first) == 100 and step_from_name(second) == 200
    series = read_extract([second, first])
    assert series.steps == [100, 200] and series.labels == LABELS
    for p in series.points:
        for k in ("eval_decision_prob_mass", "eval_decision_accuracy", "eval_decision_ece", "eval_decision_nll",
                  "eval_avg_p_accept", "eval_decision_brier"):
            assert p.metrics.scalars[k] == pytest.approx(want["scalars"][k], rel=1e-9), k
    # --steps overrides the names; a file whose step cannot be told is an error.
    assert read_sources([str(first), str(second)], steps=[5, 9])[0].steps == [5, 9]
    odd = tmp_path / "scores.jsonl"
    shutil.copy(first, odd)
    with pytest.raises(TokcalError, match="pass --steps"):
        read_extract([odd])
    with pytest.raises(TokcalError, match="one --steps value per extract file"):
        read_extract([first, second], steps=[1])
    with pytest.raises(TokcalError, match="both step 100"):
        read_extract([first, first])


def test_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(TokcalError, match="WANDB_MODE=offline.*sync"):
        read_source("wandb:me/proj/abc123")
    assert main(["report", "wandb:me/proj/abc123", "--output", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokcal report: error:") and len(err.splitlines()) == 1
    with pytest.raises(TokcalError, match="report source not found"):
        read_source(str(tmp_path / "missing"))
    with pytest.raises(TokcalError, match="no local tokcal runs"):
        read_source(str(tmp_path))
    with pytest.raises(TokcalError, match="--steps applies to extract"):
        read_sources([], steps=[1])
    with pytest.raises(TokcalError, match="nothing to report"):
        write_report([], tmp_path / "r.html")


def test_opens_in_headless_chromium(chromium, extract_files, mlflow_server, monkeypatch, tmp_path):  # noqa: F811
    """Three runs overlaid (local, MLflow, extract); every image decodes, no network."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "tokcal"
    with open_tracker("local", local_dir=store) as tracker:
        log_run(tracker)
    mtracker = open_tracker("mlflow", tracking_uri=mlflow_server, experiment="tokcal-report", spool=False)
    log_run(mtracker)
    mtracker.close()
    first, second, _ = extract_files
    out = tmp_path / "report.html"
    rc = main(["report", str(store), f"mlflow:{mtracker.run_id}", str(first), str(second),
               "--tracking-uri", mlflow_server, "--output", str(out)])
    assert rc == 0
    assert_self_contained(out, 5)
    seen = check_images(chromium, out, tmp_path)
    n_steps = 2 * (7 + 2) + 2
    assert seen["title"] == "tokcal report"
    # comparison, evolution, 3 per step, and the extract series' per-sample views (its lines carry
    # `index`): heatmap, flips and risk-coverage; the local and MLflow runs logged no records
    assert seen["images"] == 2 + 3 * n_steps + 3 and seen["bad"] == []
    assert min(seen["widths"]) > 100
    assert seen["sliders"] == 5 and "js" in seen["js"]
    assert seen["steps"] == n_steps and seen["visible_steps"] == 5  # one step per slider is shown
    png = screenshot(chromium, out, tmp_path / "shot.png", tmp_path)
    from PIL import Image

    with Image.open(png) as img:
        assert img.size == (1280, 1500)
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(999)) > 50  # not a blank page


def test_wandb_rows(tmp_path, monkeypatch, wandb_offline):
    """What the W&B backend logs, read back through the public API's rows. Offline here:
    the rows come from the real offline run file, the API object is a stand-in."""
    wandb = pytest.importorskip("wandb")
    from tests.helpers.wandb_reader import OfflineRun, find_run_file

    tracker = open_tracker("wandb", project="tokcal-report", run_name="w", spool=False)
    tracker.log_config({"tokcal": {"spec": {"labels": LABELS, "prefix": "\\boxed{"}}})  # as the callback does
    logged = log_run(tracker)
    tracker.close()
    run_file = find_run_file(wandb_offline)
    run = OfflineRun(run_file, name="w")

    class Api:
        def __init__(self, timeout=None):
            pass

        def run(self, path):
            assert path == f"me/tokcal-report/{tracker.run_id}"
            return run

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setattr(wandb, "Api", Api)
    series = read_source(f"wandb:me/tokcal-report/{tracker.run_id}")
    assert [s.name for s in series] == ["wandb w · eval", "wandb w · eval_holdout"]
    assert series[0].steps == sorted(LIVE + BACKFILLED) and series[1].steps == [0, 120]
    for s in series:
        assert s.labels == LABELS  # from the run config
        assert "W&B UI" in s.notes[0]
        for p in s.points:
            assert p.backfilled == (p.step in BACKFILLED or p.metrics.prefix == "eval_holdout_")
            want = logged[(p.metrics.prefix, p.step)].scalars
            assert p.metrics.scalars == pytest.approx({k: v for k, v in want.items() if not np.isnan(v)})
    run.config = {}
    assert read_wandb(f"me/tokcal-report/{tracker.run_id}")[0].labels == ["accept", "reject"]  # keys only
    out = write_report(series, tmp_path / "w.html")
    text = out.read_text(encoding="utf-8")
    assert "No reliability bins" in text
    # each series gets its per-sample views, or the note saying why not
    with_records = sum(any(p.per_sample is not None for p in s.points) for s in series)
    assert text.count("class=per-sample ") == with_records
    assert text.count("per-sample-skipped") == len(series) - with_records


# ------------------------------------------------------------------ per-sample analysis

SIM_STEPS = [0, 50, 100, 150, 200, 250, 300, 350]
ANALYSIS = ("#comparison", "#compare-table", "div.per-sample", "img.heatmap", "img.flips", "img.risk-coverage",
            "table.wrong", ".per-sample-skipped", "table.wrong td.text")


def simulated_store(store, n: int = 60):
    """Two runs with per-sample records (one leaves samples out at step 100, one keeps no
    text) and one old-style run without them, all in one local store."""
    from tokcal.demo.simulated import simulate_run

    runs = []
    for seed, skill, drop, text in ((1, 0.8, 100, True), (2, 1.3, None, False)):
        with open_tracker("local", local_dir=store) as tracker:
            runs.append((tracker.run_id, simulate_run(tracker, seed=seed, steps=SIM_STEPS, n=n, skill=skill,
                                                      drop_at=drop, text=text)))
    with open_tracker("local", local_dir=store) as tracker:
        for step in (0, 100):
            tracker.log_evaluation(fake_metrics(step), step)
        old = tracker.run_id
    return runs, old


def wrong_rows(page_text: str, slug: str) -> list[list[str]]:
    """The cells of the most-confidently-wrong table of the series ``slug``, row by row."""
    section = page_text.split(f'id="per-sample-{slug}"')[1].split("</div>")[0]
    body = section.split("<table class=wrong>")[1].split("</table>")[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in body.split("<tr>")[2:]]


def assert_wrong_table(rows, rec, step: int) -> None:
    """The table against a brute-force loop over the record's decisions."""
    from tests.test_per_sample_views import brute_wrong

    want = brute_wrong([(step, rec)], 10)
    assert len(rows) == len(want) > 0
    for cells, (conf, st, key, pred, text) in zip(rows, want):
        i = int(np.flatnonzero(rec.keys == key)[0])
        assert cells[1] == f"#{rec.index[i]}" and cells[2] == str(st) == str(step)
        assert cells[3] == LABELS[rec.gt[i]] and cells[4] == LABELS[pred] != cells[3]
        assert cells[5] == f"{conf:.3f}"
        assert cells[6:8] == [f"{rec.probs[i, 0]:.3f}", f"{rec.probs[i, 1]:.3f}"]
        assert cells[8] == f"{rec.probs[i].sum():.3f}"
        if text is not None:
            assert cells[9] == text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_per_sample_views_in_chromium(chromium, tmp_path):  # noqa: F811
    """Two simulated runs with per-sample records and one without, from a real local store:
    comparison, heatmap, flips, risk-coverage and the wrong list; every image decodes."""
    from tests.test_per_sample_views import brute_heatmap
    from tokcal.core.per_sample_views import learning_heatmap

    store = tmp_path / "tokcal"
    runs, old = simulated_store(store)
    out = tmp_path / "report.html"
    assert main(["report", str(store), "--output", str(out), "--no-step-figures"]) == 0
    seen = check_images(chromium, out, tmp_path, ANALYSIS)
    assert seen["bad"] == [] and seen["images"] == 2 + 3 * 2 and min(seen["widths"]) > 100
    texts = min(10, int((~runs[0][1].records[SIM_STEPS[-1]].correct).sum()))  # only the first run keeps text
    assert texts > 0
    assert seen["selectors"] == {"#comparison": 1, "#compare-table": 1, "div.per-sample": 2, "img.heatmap": 2,
                                 "img.flips": 2, "img.risk-coverage": 2, "table.wrong": 2,
                                 ".per-sample-skipped": 1, "table.wrong td.text": texts}
    text = out.read_text(encoding="utf-8")
    assert "&lt;proof&gt;" in text and "<proof>" not in text  # the kept review text, escaped

    series = {s.source.rsplit("/", 1)[-1]: s for s in read_sources([str(store)])}
    assert series[old].points[0].per_sample is None
    order = [s.source.rsplit("/", 1)[-1] for s in read_sources([str(store)])]
    for run_id, sim in runs:
        # what the report draws, from the records read back, against a loop over what was logged
        h = learning_heatmap([(p.step, p.per_sample) for p in series[run_id].points])
        rows, _ = brute_heatmap([(st, sim.records[st]) for st in sim.steps])
        assert h.keys.tolist() == [r[1] for r in rows]
        np.testing.assert_allclose(h.q_true, np.array([r[2] for r in rows]), rtol=1e-12, equal_nan=True)
        assert_wrong_table(wrong_rows(text, f"local-{run_id}-eval"), sim.records[SIM_STEPS[-1]], SIM_STEPS[-1])
    assert np.isnan(learning_heatmap([(p.step, p.per_sample) for p in series[runs[0][0]].points]).q_true).any()

    # the comparison table: the last evaluation of each series, metrics as logged
    table = text.split("id=compare-table>")[1].split("</table>")[0]
    assert table.count("step 350") == 2 and table.count("step 100") == 1
    acc = re.search(r'data-metric="decision_accuracy"><th>accuracy</th>(.*?)</tr>', table).group(1)
    from sklearn.metrics import accuracy_score

    want = {rid: accuracy_score(sim.records[350].gt, sim.records[350].probs.argmax(axis=1)) for rid, sim in runs}
    want[old] = fake_metrics(100).scalars["eval_decision_accuracy"]
    cells = [re.sub("<.*?>", "", c) for c in re.findall(r"<td>(.*?)</td>", acc)]
    # the value, then its interval in brackets where the series holds per-sample records
    assert [c.split(" [")[0] for c in cells] == [f"{want[rid]:.3f}" for rid in order]
    assert [" [" in c for c in cells] == [rid != old for rid in order]


def test_compare_step(tmp_path, capsys):
    store = tmp_path / "tokcal"
    runs, _ = simulated_store(store, n=30)
    out = tmp_path / "r.html"
    assert main(["report", str(store), "--output", str(out), "--no-step-figures", "--compare-step", "120"]) == 0
    text = out.read_text(encoding="utf-8")
    table = text.split("id=compare-table>")[1].split("</table>")[0]
    assert table.count("step 100") == 3  # at or before 120: 100 in every run
    assert "at or before step 120" in text
    for run_id, sim in runs:
        assert_wrong_table(wrong_rows(text, f"local-{run_id}-eval"), sim.records[100], 100)
    # before every evaluation, or negative: one-line errors, nothing written
    capsys.readouterr()
    for bad in ("-1", "-5"):
        assert main(["report", str(store), "--output", str(tmp_path / "x.html"), "--compare-step", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert "expected --compare-step to be a step >= 0" in err and len(err.splitlines()) == 1
    late = [type(s).of(s.name, [p for p in s.points if p.step >= 100]) for s in read_sources([str(store)])]
    with pytest.raises(TokcalError, match=r"at or after the first evaluation \(step 100\), got 50"):
        write_report(late, tmp_path / "y.html", compare_step=50)
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()
    # a series that starts after the chosen step is left out of the comparison, with a note
    full = read_sources([str(store)])[0]
    text = write_report([full, late[1]], tmp_path / "z.html", compare_step=50,
                        step_figures=False).read_text(encoding="utf-8")
    table = text.split("id=compare-table>")[1].split("</table>")[0]
    assert table.count("step 50") == 1 and html.escape(late[1].name) not in table
    assert f"left out (no evaluation at or before step 50): {html.escape(late[1].name)}" in text
    assert "No per-sample record at or before step 50" in text
    # records without decisions: a note, no figures
    from tokcal.core.per_sample import PerSample

    empty = PerSample(LABELS, np.zeros(0, int), np.zeros(0, int), np.zeros((0, 2)))
    bare = type(full).of("bare", [type(p)(p.step, p.metrics, per_sample=empty) for p in full.points])
    text = write_report([bare], tmp_path / "e.html", step_figures=False).read_text(encoding="utf-8")
    assert "the per-sample records hold no decisions" in text and "class=per-sample " not in text
    # one series: no comparison
    one = write_report([full], tmp_path / "one.html", step_figures=False).read_text(encoding="utf-8")
    assert "id=comparison" not in one and "class=per-sample " in one
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "--compare-step 400" in capsys.readouterr().out


def test_per_sample_views_from_mlflow(mlflow_server, monkeypatch, tmp_path):
    """A run on a real MLflow server with per-sample records, next to a local one: the
    MLflow series gets the per-sample views, its numbers from the records read back."""
    from tokcal.demo.simulated import simulate_run
    from tests.test_per_sample_views import brute_heatmap
    from tokcal.core.per_sample_views import learning_heatmap

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = open_tracker("mlflow", tracking_uri=mlflow_server, experiment="tokcal-report-ps", run_name="ps",
                           spool=False)
    sim = simulate_run(tracker, seed=4, steps=SIM_STEPS[:5], n=80, drop_at=50)
    tracker.close()
    store = tmp_path / "tokcal"
    with open_tracker("local", local_dir=store) as local:
        simulate_run(local, seed=5, steps=SIM_STEPS[:3], n=40, text=False)
    out = tmp_path / "report.html"
    assert main(["report", f"mlflow:{tracker.run_id}", str(store), "--tracking-uri", mlflow_server,
                 "--output", str(out), "--no-step-figures"]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.count("class=per-sample ") == 2 and "per-sample-skipped" not in text
    assert 'id="per-sample-mlflow-ps-eval"' in text
    (s,) = read_mlflow(tracker.run_id, mlflow_server)
    h = learning_heatmap([(p.step, p.per_sample) for p in s.points])
    rows, _ = brute_heatmap([(st, sim.records[st]) for st in sim.steps])
    np.testing.assert_allclose(h.q_true, np.array([r[2] for r in rows]), rtol=1e-12, equal_nan=True)
    assert_wrong_table(wrong_rows(text, "mlflow-ps-eval"), sim.records[200], 200)
    assert "id=comparison" in text
