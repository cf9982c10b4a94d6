"""The demo's steps: data, tokenizer and model, fine-tuning with tracking, backfill, report.

Layout of the demo folder (``tokcal-demo/`` by default)::

    data/train.jsonl eval.jsonl holdout.jsonl   synthetic reviews (messages format)
    train/checkpoint-0                          the random model and its tokenizer
    train/checkpoint-25 ...                     the Trainer's checkpoints
    train/tokcal.json                           the run the callback logged into
    mlflow.db  mlartifacts/                     the MLflow store (sqlite) and its artifacts
    report.html  report_files/                  the report and its PNGs
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokcal.errors import TokcalError
from tokcal.jobs.state import STATE_FILE, read_state, settings_from_state

MARKER = ".tokcal-demo"  # marks a folder the demo made, so a rerun may replace its entries
ENTRIES = ("data", "train", "mlflow.db", "mlartifacts", "report.html", "report_files", MARKER)
EXPERIMENT = "tokcal-demo"
HOLDOUT_PREFIX = "eval_holdout_"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and training settings, tuned so a 2-core CPU finishes in about 3 minutes."""

    seed: int = 0
    n_train: int = 800
    n_eval: int = 128
    n_holdout: int = 128
    noise: float = 0.1
    vocab_size: int = 512
    hidden: int = 64
    layers: int = 2
    max_steps: int = 240
    eval_steps: int = 20
    batch_size: int = 16
    learning_rate: float = 2e-3


@dataclass
class DemoResult:
    """What the demo left behind, for the caller (and the tests)."""

    folder: Path
    tracking_uri: str
    run_id: str
    series: list[Any] = field(default_factory=list)  # tokcal.jobs.report.Series: live eval, backfilled holdout
    report: Path | None = None
    seconds: float = 0.0


def prepare_folder(folder: Path, force: bool = False) -> None:
    """Create ``folder``, or clear the demo's own entries from an earlier demo run.

    Raises:
        TokcalError: ``folder`` is a file, or a non-empty folder the demo did not make
            (unless ``force``; even then only the demo's own entries are removed).
    """
    if folder.exists() and not folder.is_dir():
        raise TokcalError(f"{folder} is a file; expected a folder for the demo (--output DIR)")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).exists() and not force:
        raise TokcalError(
            f"{folder} is not empty and was not made by 'tokcal demo'; pick another folder with --output DIR, "
            "or pass --force to write the demo into it (only its own entries are replaced)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for name in ENTRIES:
        p = folder / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    (folder / MARKER).write_text("made by tokcal demo; 'tokcal demo' may replace this folder's demo files\n")


def write_data(folder: Path, cfg: DemoConfig) -> dict[str, Path]:
    """Train, eval and held-out splits of :func:`tokcal.data.synthetic.review_records`."""
    from tokcal.data.synthetic import review_records

    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": (cfg.n_train, cfg.seed), "eval": (cfg.n_eval, cfg.seed + 1),
              "holdout": (cfg.n_holdout, cfg.seed + 2)}
    paths = {}
    for name, (n, seed) in splits.items():
        recs = review_records(n, seed=seed, noise=cfg.noise)
        for r in recs:
            r["id"] = f"{name}-{r['id']}"
        paths[name] = folder / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return paths


@contextmanager
def mlflow_env(uri: str, experiment: str) -> Iterator[None]:
    """Point the Trainer's MLflow integration at ``uri``/``experiment``, then restore the
    environment and MLflow's process-wide tracking URI (which the integration sets)."""
    from tokcal.io import env_vars

    try:
        from mlflow.tracking._tracking_service import utils as fluent
    except ImportError:  # a private module: if it moves, only the restore is skipped
        fluent = None
    old_fluent = getattr(fluent, "_tracking_uri", None)
    try:
        with env_vars({"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": experiment}):
            yield
    finally:
        if fluent is not None and hasattr(fluent, "_tracking_uri"):
            fluent._tracking_uri = old_fluent


@contextmanager
def quiet() -> Iterator[None]:
    """No per-file progress bars from transformers (saving, loading weights)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def create_experiment(uri: str, artifacts: Path) -> str:
    """The demo experiment in the sqlite store, its artifacts kept in the demo folder."""
    from tokcal.errors import require

    mlflow = require("mlflow", "mlflow")

    for name in ("alembic", "mlflow.store.db.utils"):  # the store's schema set-up
        logging.getLogger(name).setLevel(logging.WARNING)
    client = mlflow.MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(EXPERIMENT, artifact_location=artifacts.resolve().as_uri())


def run_demo(folder: str | os.PathLike[str] = "tokcal-demo", *, cfg: DemoConfig = DemoConfig(),
             force: bool = False, out: Any = print) -> DemoResult:
    """Run the whole demo into ``folder``; ``out`` prints the progress lines."""
    with quiet():
        return _run(folder, cfg, force, out)


def _run(folder: str | os.PathLike[str], cfg: DemoConfig, force: bool, out: Any) -> DemoResult:
    from tokcal.demo.train import build_start_checkpoint, train

    t0 = time.perf_counter()
    say = lambda text: out(f"{text} [{time.perf_counter() - t0:.0f}s]")
    folder = Path(folder)
    from tokcal.errors import require

    require("mlflow", "mlflow")  # before anything is written
    prepare_folder(folder, force)
    root = folder.resolve()
    uri = f"sqlite:///{root / 'mlflow.db'}"

    say(f"[1/5] data: {cfg.n_train} train, {cfg.n_eval} eval and {cfg.n_holdout} held-out synthetic reviews "
        f"-> {folder / 'data'}/")
    data = write_data(folder / "data", cfg)
    train_dir = folder / "train"
    n_params = build_start_checkpoint(data["train"], train_dir / "checkpoint-0", cfg)
    say(f"[2/5] a byte-level BPE tokenizer and a tiny Qwen2 ({n_params / 1e6:.2f}M parameters, random weights) "
        f"-> {train_dir / 'checkpoint-0'}/")
    say(f"[3/5] fine-tuning {cfg.max_steps} steps on CPU, evaluating every {cfg.eval_steps}; "
        f"tokcal logs to MLflow ({uri})")
    create_experiment(uri, folder / "mlartifacts")
    with mlflow_env(uri, EXPERIMENT):
        train(data, train_dir, cfg, tracking_uri=uri, out=out)
    state = read_state(train_dir / STATE_FILE)
    run_id = next(t["run_id"] for t in state["trackers"] if t["backend"] == "mlflow")

    say("[4/5] backfill: rescoring every checkpoint (step 0 too) on the held-out split into the same run")
    out(f"      $ tokcal backfill {train_dir} --data {data['holdout']} --metric-prefix {HOLDOUT_PREFIX} --quiet")
    _backfill(train_dir, data["holdout"], state, out)

    from tokcal.jobs.report import read_mlflow, write_report

    series = read_mlflow(run_id, uri)
    say("[5/5] report: the evolution over steps, reliability diagrams and histograms of both series")
    report = write_report(series, folder / "report.html", title="tokcal demo: a tiny model learns to accept/reject")
    out(f"      -> {report}")
    return DemoResult(folder, uri, run_id, series, report, time.perf_counter() - t0)


def _backfill(train_dir: Path, data: Path, state: dict[str, Any], out: Any) -> None:
    """What ``tokcal backfill TRAIN_DIR --data DATA --metric-prefix holdout_`` does."""
    from tokcal.jobs.backfill import backfill
    from tokcal.trackers.targets import open_targets, tracker_targets

    trackers = open_targets(tracker_targets(state))
    try:
        report = backfill([train_dir], data, trackers, settings_from_state(state), metric_prefix=HOLDOUT_PREFIX,
                          progress=False)
    finally:
        for t in trackers:
            t.close()
    out("      " + report.summary().splitlines()[-1])
    if not report.ok:
        raise TokcalError("backfill failed:\n" + report.summary())
