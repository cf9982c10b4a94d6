"""Reliability of the trackers, on real components: a tracker down or hung during a real
Trainer run, `tokcal sync` afterwards, concurrent backfills (real processes), copied
output folders, unwritable stores, damaged spools, file modes and failed runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tokcal import DecisionTrackingCallback
from tests.helpers.mlflow_server import MlflowServer, free_port
from tests.helpers.training import train_tiny
from tokcal.cli.main import main
from tokcal.core.metrics import DecisionMetrics, compute_metrics
from tokcal.core.spec import DecisionSpec
from tokcal.io import exclusive_lock
from tokcal.jobs.backfill import backfill
from tokcal.jobs.extract import score_checkpoint
from tokcal.jobs.settings import TrackingSettings
from tokcal.jobs.state import STATE_FILE, read_state, write_state
from tokcal.trackers import open_tracker
from tokcal.trackers.local import LocalTracker, read_local_store

ROOT = Path(__file__).resolve().parents[1]
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
              "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
              "TOKCAL_MLFLOW_MAX_RETRIES", "TOKCAL_MLFLOW_TIMEOUT")
SMALL = dict(max_steps=4, eval_steps=2, n_train=16, n_eval=9)  # evaluations at steps 2 and 4


@pytest.fixture
def mlflow_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MLflow's own defaults (7 retries with back-off, 120 s): tokcal must bound its calls itself."""
    for name in MLFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TOKCAL_LOCK_DIR", str(tmp_path / "locks"))


def make_metrics(seed: int, n: int = 40) -> DecisionMetrics:
    rng = np.random.default_rng(seed)
    return compute_metrics(rng.dirichlet([2.0, 2.0, 1.0], size=n)[:, :2], rng.integers(0, 2, size=n),
                           ["Accept", "Reject"])


def spool_kinds(folder: Path) -> list[tuple[str, int]]:
    return sorted((e["kind"], e["step"]) for e in (json.loads(f.read_text()) for f in folder.glob("*.spool.json")))


def tokcal_history(trainer) -> dict[int, dict]:
    """What the callback put into the Trainer's log_history, by step."""
    return {h["step"]: h for h in trainer.state.log_history if "eval_decision_ece" in h}


def env_snapshot() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in MLFLOW_ENV}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bpe_checkpoint: Path) -> Path:
    """A real 6-step fine-tune saving checkpoint-2, -4 and -6, plus its eval.jsonl."""
    out = tmp_path_factory.mktemp("reliab-train") / "out"
    train_tiny(tiny_bpe_checkpoint, out, max_steps=6, eval_steps=2, n_train=16, n_eval=9)
    return out


def backfill_cmd(*argv: object) -> list[str]:
    return [sys.executable, "-m", "tokcal.cli.main", "backfill", *map(str, argv), "--quiet"]


def sub_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKCAL_LOCK_DIR=str(tmp_path / "locks"))


# ------------------------------------------------------------- the tracker down or hung


@pytest.mark.slow
def test_server_down_at_train_begin_then_sync_creates_the_run(tiny_bpe_checkpoint, tmp_path, mlflow_defaults,
                                                              capsys):
    server = MlflowServer(tmp_path / "server", port=free_port())  # not started: down at train begin
    out = tmp_path / "out"
    before = env_snapshot()
    cb = DecisionTrackingCallback(backend="mlflow", tracking_uri=server.uri, experiment="down-at-begin")
    try:
        trainer = train_tiny(tiny_bpe_checkpoint, out, callbacks=[cb], **SMALL)
        cb.close()
        assert env_snapshot() == before  # the bounds were set for tokcal's calls only
        (recorded,) = read_state(out / STATE_FILE)["trackers"]
        assert recorded["backend"] == "mlflow" and recorded["run_id"] is None and recorded["pending"]
        spool = out / "tokcal" / "spool"
        assert Path(recorded["spool_dir"]) == spool.resolve()
        assert spool_kinds(spool) == [("close", 0), ("config", 0), ("create", 0), ("evaluation", 2),
                                      ("evaluation", 4)]
        capsys.readouterr()
        assert main(["backfill", str(out), "--data", str(out / "eval.jsonl"), "--quiet"]) == 2
        assert "not created yet" in capsys.readouterr().err

        server.start()
        assert main(["sync", str(out)]) == 0  # the output folder: finds out/tokcal/spool
        text = capsys.readouterr().out
        (recorded,) = read_state(out / STATE_FILE)["trackers"]
        run_id = recorded["run_id"]
        assert run_id and "pending" not in recorded and f"created mlflow run {run_id}" in text
        assert not list(spool.glob("*.spool.json"))
        assert main(["sync", str(out)]) == 0
        assert "nothing to sync" in capsys.readouterr().out

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=server.uri)
        run = client.get_run(run_id)
        assert run.info.experiment_id == client.get_experiment_by_name("down-at-begin").experiment_id
        assert run.info.status == "FINISHED" and run.data.params["tokcal.backend"] == "mlflow"
        live = tokcal_history(trainer)
        for key in ("eval_decision_ece", "eval_decision_prob_mass", "eval_avg_p_accept"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            assert history == [(s, pytest.approx(live[s][key], rel=1e-12)) for s in (2, 4)], key
        own = score_checkpoint(out / "checkpoint-2", out / "eval.jsonl", DecisionSpec(), progress=False)
        assert live[2]["eval_decision_prob_mass"] == pytest.approx(
            own.metrics().scalars["eval_decision_prob_mass"], abs=1e-5)
        assert {f"tokcal/eval/bins_step_00000{s}.json" for s in (2, 4)} <= {
            a.path for a in client.list_artifacts(run_id, "tokcal/eval")}

        # tokcal.json now names the run: backfill finds it without flags.
        assert main(["backfill", str(out), "--data", str(out / "eval.jsonl"), "--quiet",
                     "--metric-prefix", "eval_holdout_", "--output-dir", str(tmp_path / "o")]) == 0
        assert "2 logged, 0 skipped, 0 failed" in capsys.readouterr().out
        assert sorted(m.step for m in client.get_metric_history(run_id, "eval_holdout_decision_ece")) == [2, 4]
    finally:
        server.stop()


@pytest.mark.slow
def test_server_hung_mid_training_is_spooled_then_replayed(tiny_bpe_checkpoint, tmp_path, mlflow_defaults,
                                                           monkeypatch):
    """SIGSTOP: the server accepts connections and never answers, the worst outage."""
    from transformers import TrainerCallback

    monkeypatch.setenv("TOKCAL_MLFLOW_TIMEOUT", "2")
    server = MlflowServer(tmp_path / "server").start()
    cb = DecisionTrackingCallback(backend="mlflow", tracking_uri=server.uri, experiment="hung")

    class Hang(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                cb.flush()  # the run is open
                os.killpg(server.proc.pid, signal.SIGSTOP)

    out = tmp_path / "out"
    try:
        trainer = train_tiny(tiny_bpe_checkpoint, out, callbacks=[cb, Hang()], **SMALL)
        cb.close()
        (recorded,) = read_state(out / STATE_FILE)["trackers"]
        assert spool_kinds(out / "tokcal" / "spool") == [("close", 0), ("evaluation", 2), ("evaluation", 4)]
        os.killpg(server.proc.pid, signal.SIGCONT)
        assert main(["sync", str(out)]) == 0
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=server.uri)
        live = tokcal_history(trainer)
        history = sorted((m.step, m.value) for m in client.get_metric_history(recorded["run_id"], "eval_decision_ece"))
        assert history == [(s, pytest.approx(live[s]["eval_decision_ece"], rel=1e-12)) for s in (2, 4)]
        assert client.get_run(recorded["run_id"]).info.status == "FINISHED"
    finally:
        if server.running:
            os.killpg(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_backfill_into_an_unreachable_server_is_one_line(tmp_path, mlflow_defaults, capsys, tiny_bpe_checkpoint):
    ckpt = tmp_path / "out" / "checkpoint-1"
    shutil.copytree(tiny_bpe_checkpoint, ckpt)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "x"},
                                             {"role": "assistant", "content": "\\boxed{Accept}"}]}) + "\n")
    down = f"http://127.0.0.1:{free_port()}"
    assert main(["backfill", str(tmp_path / "out"), "--data", str(data), "--backend", "mlflow", "--tracking-uri",
                 down, "--run-id", "0" * 32, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not open MLflow run" in err and "the server did not answer" in err and "\n" not in err
    assert not (ckpt.parent / "tokcal").exists()  # nothing was scored


# ------------------------------------------------------------------ one point per step


@pytest.mark.slow
def test_two_backfill_processes_into_one_local_store(run_dir, tmp_path):
    runs = tmp_path / "runs"
    tracker = LocalTracker(runs)
    common = [run_dir, "--data", run_dir / "eval.jsonl", "--backend", "local", "--run-id", tracker.run_id,
              "--local-dir", runs]
    env = sub_env(tmp_path)
    procs = [subprocess.Popen(backfill_cmd(*common, "--output-dir", tmp_path / f"o{i}"), env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (1, 2)]
    results = [(p.returncode, *outs) for p, outs in ((p, p.communicate(timeout=300)) for p in procs)]
    assert sorted(r["step"] for r in read_local_store(tracker.directory)) == [2, 4, 6]  # each step once
    codes = sorted(rc for rc, _, _ in results)
    if codes == [0, 2]:  # they overlapped: the second stopped at once, naming the first
        (first,) = [p for p, (rc, _, _) in zip(procs, results) if rc == 0]
        (err,) = [e for rc, _, e in results if rc == 2]
        assert f"is being written by another tokcal process (PID {first.pid}" in err
        assert "Traceback" not in err
    else:  # the first had finished: the second found every step logged
        assert codes == [0, 0] and any("0 logged, 3 skipped" in o for _, o, _ in results), results


@pytest.mark.slow
def test_a_held_lock_stops_backfill_before_scoring(run_dir, tmp_path, mlflow_server, mlflow_defaults, capsys):
    runs = tmp_path / "runs"
    tracker = LocalTracker(runs)
    with exclusive_lock(tracker.writer_lock(), "local run (the test)"):  # another process: the subprocess
        proc = subprocess.run(backfill_cmd(run_dir, "--data", run_dir / "eval.jsonl", "--backend", "local",
                                           "--run-id", tracker.run_id, "--local-dir", runs,
                                           "--output-dir", tmp_path / "o"),
                              env=sub_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert f"local run {tracker.run_id} is being written by another tokcal process (PID {os.getpid()}" in err
    assert "\n" not in err and not (tmp_path / "o").exists()  # one line, nothing scored

    # An MLflow run: the same lock, keyed by the run (this process holds it, a new open file asks).
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run_id = client.create_run(client.create_experiment(f"lock-{tmp_path.name}")).info.run_id
    target = open_tracker("mlflow", run_id=run_id, tracking_uri=mlflow_server, spool=False)
    with exclusive_lock(target.writer_lock(), "the test"):
        assert main(["backfill", str(run_dir), "--data", str(run_dir / "eval.jsonl"), "--backend", "mlflow",
                     "--tracking-uri", mlflow_server, "--run-id", run_id, "--quiet",
                     "--output-dir", str(tmp_path / "o")]) == 2
    assert f"mlflow run {run_id} is being written by another tokcal process" in capsys.readouterr().err
    assert client.get_metric_history(run_id, "eval_decision_samples") == []


@pytest.mark.slow
def test_the_run_is_checked_right_before_each_write(run_dir, tmp_path, mlflow_defaults):
    """The same run twice in the list: the second write of each step finds the first."""
    runs = tmp_path / "runs"
    first = LocalTracker(runs)
    again = LocalTracker(runs, run_id=first.run_id)
    report = backfill([run_dir], run_dir / "eval.jsonl", [first, again], progress=False, output_dir=tmp_path / "o")
    assert report.ok and len(report.logged) == 3
    assert sorted(r["step"] for r in read_local_store(first.directory)) == [2, 4, 6]


@pytest.mark.slow
def test_a_second_evaluate_at_the_same_step_is_not_logged_again(tiny_bpe_checkpoint, tmp_path):
    out = tmp_path / "out"
    cb = DecisionTrackingCallback(backend="local")
    trainer = train_tiny(tiny_bpe_checkpoint, out, callbacks=[cb], **SMALL)
    with pytest.warns(UserWarning, match="already has the 'eval_' evaluation at step 4"):
        trainer.evaluate()  # at step 4 again
        cb.flush()
    (recorded,) = read_state(out / STATE_FILE)["trackers"]
    assert [r["step"] for r in read_local_store(recorded["local_dir"])] == [2, 4]
    cb.close()


# ------------------------------------------------------------------- folders and files


@pytest.mark.slow
def test_a_copied_output_folder_backfills_into_its_copy(tiny_bpe_checkpoint, tmp_path):
    out = tmp_path / "out"
    train_tiny(tiny_bpe_checkpoint, out, callbacks=[DecisionTrackingCallback(backend="local")], **SMALL)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, symlinks=True)
    assert main(["backfill", str(copy), "--data", str(copy / "eval.jsonl"), "--quiet",
                 "--metric-prefix", "eval_holdout_", "--output-dir", str(tmp_path / "o")]) == 0
    (original,) = read_state(out / STATE_FILE)["trackers"]
    (copied,) = read_state(copy / STATE_FILE)["trackers"]
    assert Path(copied["local_dir"]).is_relative_to(copy.resolve())
    prefixes = lambda d: sorted({(r["prefix"], r["step"]) for r in read_local_store(d)})  # noqa: E731
    assert prefixes(original["local_dir"]) == [("eval_", 2), ("eval_", 4)]  # the original is untouched
    assert prefixes(copied["local_dir"]) == [("eval_", 2), ("eval_", 4), ("eval_holdout_", 2), ("eval_holdout_", 4)]


def test_old_absolute_folders_in_tokcal_json_still_read(tmp_path):
    store = tmp_path / "elsewhere" / "run1"
    write_state(tmp_path / "out", [{"backend": "local", "run_id": "run1", "local_dir": str(store)}],
                TrackingSettings(backend="local"))
    assert json.loads((tmp_path / "out" / STATE_FILE).read_text())["trackers"][0]["local_dir"] == str(store)
    assert read_state(tmp_path / "out" / STATE_FILE)["trackers"][0]["local_dir"] == str(store)


@contextmanager
def unwritable(folder: Path) -> Iterator[None]:
    """Make ``folder`` really unwritable: mode 0555, or for root (which ignores modes) the
    immutable attribute."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root without chattr +i here: no way to make a folder unwritable")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.mark.slow
def test_an_unwritable_store_or_output_is_an_error_before_scoring(run_dir, tmp_path, mlflow_defaults, capsys):
    tracker = LocalTracker(tmp_path / "runs")
    flags = ["--data", str(run_dir / "eval.jsonl"), "--backend", "local", "--run-id", tracker.run_id,
             "--local-dir", str(tmp_path / "runs"), "--quiet"]
    with unwritable(tracker.directory):
        assert main(["backfill", str(run_dir), *flags, "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot write the local run {tracker.run_id} into" in err and "\n" not in err
    assert not (tmp_path / "o").exists() and read_local_store(tracker.directory) == []

    (tmp_path / "ro").mkdir()
    with unwritable(tmp_path / "ro"):
        assert main(["backfill", str(run_dir), *flags, "--output-dir", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--output-dir" in err and "cannot write" in err and "\n" not in err
    assert read_local_store(tracker.directory) == [] and not any((tmp_path / "ro").iterdir())


def test_a_cut_off_spool_entry_is_moved_aside_and_the_others_replayed(tmp_path, mlflow_server, mlflow_defaults,
                                                                      capsys, caplog):
    down = f"http://127.0.0.1:{free_port()}"
    metrics = {s: make_metrics(s) for s in (10, 20, 30)}
    tracker = open_tracker("mlflow", tracking_uri=down, local_dir=tmp_path, experiment=f"cut-{tmp_path.name}")
    assert tracker.run_id is None and tracker.pending  # never reached: its creation is spooled too
    for s, m in metrics.items():
        tracker.log_evaluation(m, s)
    tracker.close()
    spool = tmp_path / "spool"
    (cut,) = [f for f in spool.glob("*.spool.json") if json.loads(f.read_text())["step"] == 20]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # a copy that stopped half-way
    capsys.readouterr()
    assert main(["sync", str(tmp_path), "--tracking-uri", mlflow_server]) == 1
    captured = capsys.readouterr()
    assert f"{cut.name}.bad is unreadable" in captured.err and "0 left" in captured.out
    assert (spool / f"{cut.name}.bad").is_file() and not list(spool.glob("*.spool.json"))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(f"cut-{tmp_path.name}").experiment_id])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "eval_decision_ece"))
    assert history == [(s, pytest.approx(metrics[s].scalars["eval_decision_ece"])) for s in (10, 30)]
    assert run.info.status == "FINISHED"  # its end was spooled too, and replayed


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        tracker = LocalTracker(tmp_path / "runs")
        tracker.log_evaluation(make_metrics(0), 5)
        write_state(tmp_path / "out", [tracker.describe()], TrackingSettings())
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    files = [tracker.directory / "run.json", tracker.directory / "evaluations.jsonl", tmp_path / "out" / STATE_FILE,
             *tracker.directory.glob("*.png")]
    assert len(files) > 3
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in files} == {f.name: oct(want) for f in files}


# ----------------------------------------------------------------------- failed runs

FAILING_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from transformers import TrainerCallback
    from tokcal import DecisionTrackingCallback
    from tests.helpers.training import train_tiny

    base, out, uri, experiment, mode = sys.argv[1:]

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if mode == "raise" and state.global_step == 3:
                raise RuntimeError("boom at step 3")

    cb = DecisionTrackingCallback(backend="mlflow", tracking_uri=uri, experiment=experiment)
    train_tiny(Path(base), Path(out), callbacks=[cb, Boom()], max_steps=4, eval_steps=2, n_train=16, n_eval=9)
""")


@pytest.mark.slow
def test_a_run_tokcal_opened_ends_failed_when_training_raises(tiny_bpe_checkpoint, tmp_path, mlflow_server,
                                                               mlflow_defaults):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    statuses = {}
    for mode in ("raise", "ok"):  # nobody calls close(): the exit does
        experiment = f"ends-{mode}-{tmp_path.name}"
        proc = subprocess.run([sys.executable, "-c", FAILING_SCRIPT, str(tiny_bpe_checkpoint), str(tmp_path / mode),
                               mlflow_server, experiment, mode],
                              env=sub_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert (proc.returncode != 0) is (mode == "raise"), proc.stderr[-2000:]
        (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        statuses[mode] = run.info.status
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval_decision_ece"))
        assert steps == ([2] if mode == "raise" else [2, 4])
    assert statuses == {"raise": "FAILED", "ok": "FINISHED"}

    # In-process, as `tokcal train` does it: training raises, then close() in a finally.
    from transformers import TrainerCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 3:
                raise RuntimeError("boom at step 3")

    cb = DecisionTrackingCallback(backend="mlflow", tracking_uri=mlflow_server, experiment=f"inproc-{tmp_path.name}")
    with pytest.raises(RuntimeError, match="boom"):
        try:
            train_tiny(tiny_bpe_checkpoint, tmp_path / "inproc", callbacks=[cb, Boom()], **SMALL)
        finally:
            cb.close()
    (recorded,) = read_state(tmp_path / "inproc" / STATE_FILE)["trackers"]
    assert client.get_run(recorded["run_id"]).info.status == "FAILED"


def test_sync_while_training_still_spools_into_the_created_run(tmp_path, mlflow_server, mlflow_defaults, capsys):
    """Sync creates the run while the training (the tracker here) keeps spooling under the
    pending id; the next sync puts the later entries into the same run."""
    out = tmp_path / "out"
    down = f"http://127.0.0.1:{free_port()}"
    experiment = f"late-{tmp_path.name}"
    tracker = open_tracker("mlflow", tracking_uri=down, local_dir=out / "tokcal", experiment=experiment)
    write_state(out, [tracker.describe()], TrackingSettings(backend="mlflow"))
    metrics = {s: make_metrics(s) for s in (1, 2)}
    tracker.log_evaluation(metrics[1], 1)
    assert main(["sync", str(out), "--tracking-uri", mlflow_server]) == 0
    run_id = read_state(out / STATE_FILE)["trackers"][0]["run_id"]
    tracker.log_evaluation(metrics[2], 2)  # still spooled under the pending id
    tracker.close()
    capsys.readouterr()
    assert main(["sync", str(out), "--tracking-uri", mlflow_server]) == 0
    assert "created mlflow run" not in capsys.readouterr().out  # attached to the one created before
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    assert len(client.search_runs([client.get_experiment_by_name(experiment).experiment_id])) == 1
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval_decision_ece"))
    assert history == [(s, pytest.approx(metrics[s].scalars["eval_decision_ece"])) for s in (1, 2)]
    assert client.get_run(run_id).info.status == "FINISHED"
