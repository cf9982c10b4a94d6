"""`tokcal demo` end to end, as `make demo` runs it (a subprocess, fresh folder), and its
folder rules. The numbers asserted are the issue's: the decision mass goes from near 0 to
above 0.9 and accuracy ends well above chance, in an MLflow run that holds both the live
points and the backfilled ones."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.browser import chromium  # noqa: F401  (session fixture)
from tokcal.demo.run import MARKER, prepare_folder
from tokcal.errors import TokcalError

STEPS = list(range(0, 241, 20))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "tokcal-demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tokcal.cli.main", "demo", "--output", str(folder)],
                          capture_output=True, text=True, timeout=900, env=env)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"demo took {seconds:.0f}s\n{proc.stdout}")
    return folder, proc.stdout, proc.stderr


def history(client, run_id: str, key: str) -> dict[int, float]:
    return {int(m.step): m.value for m in client.get_metric_history(run_id, key)}


@pytest.mark.slow
def test_demo_learns_and_leaves_run_and_report(demo):
    import mlflow

    folder, out, err = demo
    uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    # What it prints: progress, the table, the report and the dashboard command.
    assert f"mlflow ui --backend-store-uri {uri}" in out
    assert f"{folder.resolve() / 'report.html'}" in out
    assert "13 logged, 0 skipped, 0 failed" in out
    table = [line for line in out.splitlines() if re.match(r"^\s+\d+ \|", line)]
    assert [int(line.split("|")[0]) for line in table] == STEPS
    assert "Writing model shards" not in out + err and "Loading weights" not in out + err
    assert "{'loss'" not in out  # no Trainer log dictionaries

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tokcal-demo")
    assert exp.artifact_location.startswith((folder.resolve() / "mlartifacts").as_uri())
    (run,) = client.search_runs([exp.experiment_id])
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags.get("tokcal_backfill") == "true"
    assert "loss" in run.data.metrics  # the Trainer's own logging went into the same run

    for prefix in ("eval_", "eval_holdout_"):  # live during training / backfilled afterwards
        mass = history(client, rid, f"{prefix}decision_prob_mass")
        acc = history(client, rid, f"{prefix}decision_accuracy")
        ece = history(client, rid, f"{prefix}decision_ece")
        assert sorted(mass) == sorted(acc) == sorted(ece) == STEPS, prefix
        assert mass[0] < 0.05 and mass[20] < 0.2, (prefix, mass)
        assert mass[240] > 0.9 and acc[240] > 0.8, (prefix, mass, acc)
        assert ece[240] < 0.15, (prefix, ece)
    bins = {f.path for f in client.list_artifacts(rid, "tokcal/eval_holdout")}
    assert len([p for p in bins if "bins_step_" in p]) == 13

    # The report: both series, a backfilled marker for every holdout step, the PNGs beside it.
    from tokcal.jobs.report import read_mlflow

    series = read_mlflow(rid, uri)
    assert [s.name for s in series] == ["mlflow tokcal-demo · eval", "mlflow tokcal-demo · eval_holdout"]
    assert [p.backfilled for p in series[0].points] == [False] * 13
    assert [p.backfilled for p in series[1].points] == [True] * 13
    html = (folder / "report.html").read_text(encoding="utf-8")
    # comparison + evolution, 3 per step, and per series (live callback and backfill both keep
    # per-sample records) the heatmap, flips and risk-coverage
    assert html.count("backfilled</td>") == 13 and html.count("<img") == 2 + 2 * 13 * 3 + 2 * 3
    assert html.count("class=per-sample ") == 2 and "per-sample-skipped" not in html
    assert all(p.per_sample is not None and len(p.per_sample) > 0 for s in series for p in s.points)
    assert (folder / "report_files" / "evolution.png").stat().st_size > 10_000
    # checkpoint-0 is the random start, the others the Trainer's
    assert sorted(int(p.name.split("-")[1]) for p in (folder / "train").glob("checkpoint-*")) == STEPS


def test_refuses_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(TokcalError, match="not made by 'tokcal demo'.*--force"):
        prepare_folder(mine)
    assert (mine / "thesis.tex").read_text() == "keep me"
    from tokcal.cli.main import main

    assert main(["demo", "--output", str(mine)]) == 2
    # --force writes the demo there but removes only the demo's own entries.
    (mine / "data").mkdir()
    (mine / "data" / "old.jsonl").write_text("{}")
    prepare_folder(mine, force=True)
    assert (mine / "thesis.tex").is_file() and not (mine / "data").exists() and (mine / MARKER).is_file()


def test_reruns_into_its_own_folder(tmp_path):
    folder = tmp_path / "tokcal-demo"
    prepare_folder(folder)  # new
    (folder / "train").mkdir()
    (folder / "mlflow.db").write_text("old")
    (folder / "my-notes.txt").write_text("mine")
    prepare_folder(folder)  # an earlier demo: replaced without --force
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "my-notes.txt"]
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(TokcalError, match="is a file"):
        prepare_folder(file)


def test_help_has_an_example(capsys):
    from tokcal.cli.main import main

    for cmd in ("demo", "report"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "example" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_report_renders_in_chromium(demo, chromium, tmp_path):  # noqa: F811
    """The demo's own report in headless Chromium. TOKCAL_UPDATE_DOCS=1 also refreshes the
    screenshot in docs/report.png (shrunk to stay small)."""
    from tests.helpers.browser import check_images, screenshot

    folder, _, _ = demo
    seen = check_images(chromium, folder / "report.html", tmp_path)
    assert seen["images"] == 2 + 2 * 13 * 3 + 2 * 3 and seen["bad"] == [] and seen["sliders"] == 2
    png = screenshot(chromium, folder / "report.html", tmp_path / "shot.png", tmp_path, size=(1280, 1900))
    if os.environ.get("TOKCAL_UPDATE_DOCS") == "1":
        from PIL import Image

        docs = Path(__file__).resolve().parents[1] / "docs" / "report.png"
        with Image.open(png) as img:
            small = img.convert("RGB").resize((960, 1425), Image.LANCZOS).quantize(colors=96)
            small.save(docs, optimize=True)
