"""No credential leaves the machine: every form of secret in a tracking URI is planted in
real trainings (every backend; the MLflow server up, and down from the start), then
backfill, sync and report run, and every file written, the MLflow server's database and
artifacts, the W&B offline files and everything printed are searched for it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.helpers.mlflow_server import MlflowServer, free_port
from tests.helpers.training import train_tiny
from tests.helpers.wandb_reader import read_config
from tokcal import DecisionTrackingCallback
from tokcal.cli.main import main
from tokcal.jobs.state import STATE_FILE, read_state
from tokcal.trackers.base import redact, redact_all

SMALL = dict(max_steps=4, eval_steps=2, n_train=16, n_eval=9)  # evaluations at steps 2 and 4
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")

# One distinct string per form of credential (found by a plain byte search).
PASSWORD = "pw4Xq9SECRETpass"  # http://user:PASSWORD@host
LONE_TOKEN = "ghpTOKENuser7Lk2"  # http://TOKEN@host
QUERY_TOKEN = "qTOKENvalue5Zr8"  # ?token=
QUERY_API_KEY = "qAPIKEYvalue3Wm1"  # ?API_KEY= (upper case)
QUERY_SIG = "qSIGvalue8Hn4"  # ?Sig=
QUERY_ACCESS = "qACCESSvalue2Jd6"  # ?access_token=
SYNC_TOKEN = "syncTOKENuser6Pp"  # the real URI given to sync and backfill
SECRETS = (PASSWORD, LONE_TOKEN, QUERY_TOKEN, QUERY_API_KEY, QUERY_SIG, QUERY_ACCESS, SYNC_TOKEN)


@pytest.mark.parametrize(("text", "shown"), [
    ("http://alice:s3cret@host:5000", "http://alice:***@host:5000"),
    ("https://ghp_abc123@mlflow.example.com/x", "https://***@mlflow.example.com/x"),
    ("http://u:p@ss@host/x?a=1", "http://u:***@host/x?a=1"),
    ("http://h/?token=1&api_key=2&Sig=3", "http://h/?token=***&api_key=***&Sig=***"),
    ("http://h/?Access_Token=1&X-Amz-Signature=2&client_secret=3&password=4&KEY=5",
     "http://h/?Access_Token=***&X-Amz-Signature=***&client_secret=***&password=***&KEY=***"),
    ("http://h/?design=1&monkey=2&sv=3", "http://h/?design=1&monkey=2&sv=3"),  # not credentials
    ("error at 'http://tok@h:1/api' (refused)", "error at 'http://***@h:1/api' (refused)"),
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
])
def test_redact_hides_every_form_of_credential(text, shown):
    assert redact(text) == shown


def test_redact_all_reaches_nested_settings():
    settings = {"tokcal": {"tracking_uri": "http://T0KEN@h", "spec": {"labels": ["A", "B"]}},
                "list": ("x", "http://h/?sig=abc"), "n": 3}
    assert redact_all(settings) == {"tokcal": {"tracking_uri": "http://***@h", "spec": {"labels": ["A", "B"]}},
                                    "list": ["x", "http://h/?sig=***"], "n": 3}


def _hits(root: Path, skip: Path) -> list[str]:
    """``file: secret`` for each secret found in a file under ``root`` (bytes, any file but ``skip``)."""
    found = []
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and p != skip):
        data = f.read_bytes()
        found += [f"{f}: {s}" for s in SECRETS if s.encode() in data]
    return found


@pytest.mark.slow
def test_no_secret_in_any_file_store_or_message(tiny_bpe_checkpoint, tmp_path, monkeypatch, wandb_offline,
                                                capsys, caplog, recwarn):
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOKCAL_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("TOKCAL_MLFLOW_MAX_RETRIES", "0")
    monkeypatch.setenv("TOKCAL_MLFLOW_TIMEOUT", "5")
    caplog.set_level(logging.INFO)
    server = MlflowServer(tmp_path / "server").start()
    host = server.uri.removeprefix("http://")
    dead = f"127.0.0.1:{free_port()}"
    uris = {
        # MLflow sends a URI's user-info as basic auth, which this server (no auth) ignores.
        "password": f"http://alice:{PASSWORD}@{host}",
        "lone_token": f"http://{LONE_TOKEN}@{host}",
        # A query string cannot be a working MLflow URI (the API path goes after it): the
        # run cannot be opened, which is said in a warning, and the settings still go to
        # the local store and W&B.
        "query": f"{server.uri}/?token={QUERY_TOKEN}&API_KEY={QUERY_API_KEY}&Sig={QUERY_SIG}",
        # Down from the start: the run's creation, settings and evaluations are spooled.
        "down": f"http://alice:{PASSWORD}@{dead}/?access_token={QUERY_ACCESS}&token={QUERY_TOKEN}",
    }
    real = f"http://{SYNC_TOKEN}@{host}"  # the working URI given to sync, backfill and report
    outs = {}
    try:
        for case, uri in uris.items():
            out = tmp_path / f"out-{case}"
            cb = DecisionTrackingCallback(backend=["local", "mlflow", "wandb"], tracking_uri=uri,
                                          experiment=f"secrets-{case}", log_per_sample=True)
            train_tiny(tiny_bpe_checkpoint, out, callbacks=[cb], **SMALL)
            cb.close()
            outs[case] = out

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=server.uri)
        for case in ("password", "lone_token"):  # those runs reached the server, with the settings
            mlflow_runs = [t for t in read_state(outs[case] / STATE_FILE)["trackers"] if t["backend"] == "mlflow"]
            (recorded,) = mlflow_runs
            run = client.get_run(recorded["run_id"])
            assert run.data.params["tokcal.spec.labels"] == json.dumps(["Accept", "Reject"])
            assert "***" in run.data.params["tokcal.tracking_uri"]
            assert {m.step for m in client.get_metric_history(run.info.run_id, "eval_decision_ece")} == {2, 4}
        assert "mlflow" not in {t["backend"] for t in read_state(outs["query"] / STATE_FILE)["trackers"]}
        assert any("could not open the mlflow tracker" in str(w.message) for w in recwarn.list)

        down = outs["down"]
        assert list((down / "tokcal" / "spool").glob("*.spool.json"))
        assert main(["sync", str(down), "--tracking-uri", real]) == 0
        (recorded,) = [t for t in read_state(down / STATE_FILE)["trackers"] if t["backend"] == "mlflow"]
        run = client.get_run(recorded["run_id"])
        assert run.data.params["tokcal.spec.labels"] == json.dumps(["Accept", "Reject"])
        assert {m.step for m in client.get_metric_history(run.info.run_id, "eval_decision_ece")} == {2, 4}

        a = outs["password"]
        assert main(["backfill", str(a), "--backend", "mlflow", "--tracking-uri", real, "--data",
                     str(a / "eval.jsonl"), "--metric-prefix", "eval_holdout_", "--quiet",
                     "--output-dir", str(tmp_path / "backfill-out")]) == 0
        recorded_a = {t["backend"]: t for t in read_state(a / STATE_FILE)["trackers"]}
        assert main(["report", recorded_a["local"]["local_dir"], f"mlflow:{recorded_a['mlflow']['run_id']}",
                     "--tracking-uri", real, "-o", str(tmp_path / "report-a.html")]) == 0
        assert main(["report", f"mlflow:{recorded['run_id']}", "--tracking-uri", real,
                     "-o", str(tmp_path / "report-down.html")]) == 0
        assert (tmp_path / "report-a.html").is_file() and (tmp_path / "report-down.html").is_file()

        # The W&B offline runs hold the settings, the URI redacted.
        runs = sorted(wandb_offline.rglob("*.wandb"))
        assert len(runs) == len(uris)
        configs = [read_config(r) for r in runs]
        assert all("***" in str(c["tokcal"]["tracking_uri"]) for c in configs), configs
        assert all(c["tokcal"]["spec"]["labels"] == ["Accept", "Reject"] for c in configs)
    finally:
        server.stop()

    # Every file under the test's folder: the outputs and their tokcal.json, the local
    # stores, the spools, the backfill output, the reports, the W&B offline files, the
    # MLflow server's sqlite database, artifacts and log.
    scanned = {p.suffix for p in tmp_path.rglob("*") if p.is_file()}
    assert {".db", ".wandb", ".json", ".html", ".png", ".jsonl"} <= scanned
    assert (tmp_path / "server" / "mlflow.db").is_file() and list((tmp_path / "server" / "artifacts").rglob("*.json"))
    # Not the server's own access log: it records the request line the MLflow client sent
    # to the server the URI names (its query string included), which is where the
    # credential was meant to go; nothing tokcal writes.
    assert _hits(tmp_path, skip=server.log_path) == []
    printed = capsys.readouterr()
    logged = "\n".join([r.getMessage() for r in caplog.records] + [str(w.message) for w in recwarn.list])
    for secret in SECRETS:
        assert secret not in printed.out and secret not in printed.err and secret not in logged, secret
