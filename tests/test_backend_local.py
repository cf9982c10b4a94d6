"""The local backend (a folder per run), the factory, redaction and missing packages."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tokcal.cli.main import main
from tokcal.core.metrics import DecisionMetrics, compute_metrics
from tokcal.errors import MissingDependencyError, TokcalError
from tokcal.trackers import (
    LocalTracker,
    open_tracker,
    read_local_store,
    redact,
)
from tokcal.trackers.local import EVALUATIONS_FILE, scalar_history


def make_metrics(seed: int, n: int = 64) -> DecisionMetrics:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet([2.0, 2.0, 1.0], size=n)[:, :2]
    return compute_metrics(probs, rng.integers(0, 2, size=n), ["Accept", "Reject"])


def test_local_round_trip(tmp_path):
    m200, m100 = make_metrics(0), make_metrics(1)
    samples = [{"id": 1, "p_accept": np.float32(0.25), "label": "Accept"}, {"id": 2, "p_accept": 0.75}]
    with open_tracker("local", local_dir=tmp_path, run_name="demo") as tracker:
        tracker.log_config({"spec": {"labels": ["Accept", "Reject"]}, "n_bins": 15})
        tracker.log_evaluation(m200, 200, samples=samples, tags={"checkpoint": "ckpt-200"})
        tracker.log_evaluation(m100, 100)  # out of order: backfill of an older checkpoint
    run_dir = tmp_path / tracker.run_id
    assert tracker.describe() == {"backend": "local", "run_id": tracker.run_id, "local_dir": str(run_dir.resolve())}

    records = read_local_store(run_dir)
    assert [r["step"] for r in records] == [200, 100]
    assert records[0]["tags"] == {"checkpoint": "ckpt-200"}
    back = DecisionMetrics.from_dict(records[0])
    assert back.scalars == pytest.approx(m200.scalars)
    assert back.reliability.rows() == m200.reliability.rows()
    assert back.histograms["p_accept"].counts.tolist() == m200.histograms["p_accept"].counts.tolist()
    assert sorted(records[0]["images"]) == ["histograms", "reliability", "reliability_positive"]
    for name in records[0]["images"].values():
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "step_000200_eval_decision_reliability.png").is_file()
    sample_lines = (run_dir / records[0]["samples_file"]).read_text().splitlines()
    assert [json.loads(x) for x in sample_lines][0] == {"step": 200, "id": 1, "p_accept": 0.25, "label": "Accept"}
    assert json.loads((run_dir / "config.json").read_text())["spec"]["labels"] == ["Accept", "Reject"]

    assert tracker.logged_steps("eval_decision_ece") == {100, 200}
    assert scalar_history(read_local_store(run_dir, last_per_step=True), "eval_decision_ece") == [
        (100, pytest.approx(m100.scalars["eval_decision_ece"])),
        (200, pytest.approx(m200.scalars["eval_decision_ece"])),
    ]
    # Attach to the same run by id and add a point.
    again = open_tracker("local", local_dir=tmp_path, run_id=tracker.run_id)
    again.log_evaluation(make_metrics(2), 300)
    assert again.logged_steps("eval_decision_ece") == {100, 200, 300}


def test_local_truncated_last_line_is_skipped_then_repaired(tmp_path, caplog):
    tracker = LocalTracker(tmp_path)
    tracker.log_evaluation(make_metrics(0), 10)
    file = tracker.directory / EVALUATIONS_FILE
    with open(file, "ab") as fh:  # what a crash in the middle of a write leaves
        fh.write(b'{"step": 20, "scalars": {"eval_decis')
    with caplog.at_level("WARNING"):
        assert [r["step"] for r in read_local_store(tracker.directory)] == [10]
    assert "truncated last line" in caplog.text
    tracker.log_evaluation(make_metrics(1), 30)
    assert [r["step"] for r in read_local_store(tracker.directory)] == [10, 30]
    assert file.read_bytes().count(b"\n") == 2

    with open(file, "ab") as fh:  # damage that is not a cut-off tail is an error
        fh.write(b"not json\n")
    with pytest.raises(TokcalError, match=r"line 3: expected a JSON object"):
        read_local_store(file)


def test_local_errors(tmp_path):
    with pytest.raises(TokcalError, match=r"expected an existing local run 'nope'"):
        open_tracker("local", local_dir=tmp_path, run_id="nope")
    tracker = open_tracker("local", local_dir=tmp_path)
    with pytest.raises(TokcalError, match=r"expected step to be an integer >= 0, got -1"):
        tracker.log_evaluation(make_metrics(0), -1)
    with pytest.raises(TokcalError, match=r"expected metrics to be a DecisionMetrics, got dict"):
        tracker.log_evaluation({"eval_decision_ece": 0.1}, 1)


def test_backend_by_name(tmp_path):
    assert open_tracker("LOCAL", local_dir=tmp_path).name == "local"
    assert open_tracker(**{"backend": "local", "local_dir": str(tmp_path)}).name == "local"  # a settings mapping
    with pytest.raises(TokcalError, match=r"expected backend to be one of 'local', 'mlflow', 'wandb', 'tensorboard', got 'comet'"):
        open_tracker("comet")
    with pytest.raises(TokcalError, match=r"unknown tracker settings \['uri'\]"):
        open_tracker("mlflow", uri="x")
    with pytest.raises(TokcalError, match=r"tracking_uri applies to the mlflow backend.*got 'http://u:\*\*\*@h/'"):
        open_tracker("wandb", tracking_uri="http://u:secret@h/")
    foreign = r"project applies to the wandb backend; expected it unset for backend 'local'"
    with pytest.raises(TokcalError, match=foreign):
        open_tracker("local", local_dir=tmp_path, project="p")
    assert open_tracker("local", local_dir=tmp_path, project=None, tracking_uri=None).name == "local"  # unset is fine


def test_redact():
    assert redact("http://alice:hunter2@mlflow:5000/api") == "http://alice:***@mlflow:5000/api"
    assert redact("failed: https://u:p%40ss@h.example/x?sig=abc&y=1") == "failed: https://u:***@h.example/x?sig=***&y=1"
    assert redact("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert redact("http://alice@host/") == "http://***@host/"  # a lone user name may be a token
    assert redact(None) == ""


@pytest.mark.parametrize("backend", ["wandb", "mlflow"])
def test_missing_package_names_the_extra(backend, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, backend, None)  # makes `import <backend>` raise ImportError
    with pytest.raises(MissingDependencyError, match=rf"pip install -e '\.\[{backend}\]' in your tokcal clone"):
        open_tracker(backend, local_dir=tmp_path)


def test_missing_package_through_the_cli(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    spool = tmp_path / "spool"
    spool.mkdir()
    entry = {"version": 1, "kind": "evaluation", "step": 5, "metrics": make_metrics(0).to_dict(),
             "samples": None, "tags": None, "target": {"backend": "wandb", "run_id": "abc", "project": "p"}}
    (spool / "000000005-1-x.spool.json").write_text(json.dumps(entry))
    assert main(["sync", str(spool)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tokcal sync: error: wandb is not installed; run: pip install -e '.[wandb]' in your tokcal "
                          "clone; its 1 spooled entries stay")  # one line: what to install, and nothing lost
    assert (spool / "000000005-1-x.spool.json").is_file()
