"""The Weights & Biases backend, following the Hugging Face Trainer's W&B conventions.

* Reuses ``wandb.run`` when the Trainer's integration (or the user) already started it.
* Keys: ``eval_decision_ece`` -> ``eval/decision_ece`` (as ``WandbCallback`` rewrites them).
* Every row carries ``train/global_step``, the x-axis set through
  ``define_metric("eval/*", step_metric="train/global_step")``. ``wandb.log`` is never
  given ``step=``: W&B drops rows whose ``step`` is lower than the run's current one,
  which would lose backfilled points for old checkpoints.
* Per evaluation (``prefix="eval_"``): the scalars; ``eval/decision_hist_<name>`` as
  ``wandb.Histogram`` over the fixed edges; ``eval/decision_reliability`` (and
  ``_positive``, ``eval/decision_histograms``) as ``wandb.Image``; ``eval/decision_bins``
  as a ``wandb.Table`` with a ``step`` column; ``eval/decision_sample_table`` when samples
  are given; the evaluation's tags as ``eval/tag_<name>`` strings.

W&B cannot resume an offline run (``WANDB_MODE=offline``): ``wandb.init(id=...,
resume="must")`` offline silently starts a second local run with the same id, so this
backend refuses instead. Sync the offline run (``wandb sync <dir>``) and attach online.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from tracking.core.metrics import DecisionMetrics
from tracking.errors import TokcalError, require
from tracking.trackers.base import (
    BINS_COLUMNS,
    FIGURE_SUFFIX,
    Tracker,
    bins_rows,
    check_metrics,
    check_step,
    finite_scalars,
    redact,
    sample_columns,
    to_jsonable,
    wandb_key,
)

logger = logging.getLogger(__name__)

STEP_METRIC = "train/global_step"
_OFFLINE_MODES = ("offline", "dryrun")


def _offline(wandb: Any, mode: str | None) -> bool:
    if mode is not None:
        return mode in _OFFLINE_MODES
    if os.environ.get("WANDB_MODE") in _OFFLINE_MODES:
        return True
    return wandb.setup().settings.mode in _OFFLINE_MODES


class WandbTracker(Tracker):
    """Log to a W&B run.

    Args:
        run_id: attach to this existing run (``resume="must"``; online only).
        project, entity: where the run lives (W&B's defaults when ``None``).
        run_name: display name of a new run.
        mode: ``"online"`` / ``"offline"``; ``None`` follows ``WANDB_MODE`` and W&B settings.
        directory: where W&B writes its local files (``wandb.init(dir=...)``).

    Example:
        >>> tracker = WandbTracker(project="my-finetune")  # doctest: +SKIP
        >>> tracker.log_evaluation(metrics, step=120)  # doctest: +SKIP
    """

    name = "wandb"

    def __init__(
        self,
        *,
        run_id: str | None = None,
        project: str | None = None,
        entity: str | None = None,
        run_name: str | None = None,
        mode: str | None = None,
        directory: str | None = None,
    ) -> None:
        wandb = require("wandb", "wandb")
        self._wandb = wandb
        self._owned = False
        self._closed = False
        current = wandb.run
        if current is not None:
            if run_id is not None and current.id != run_id:
                raise TokcalError(
                    f"expected W&B run {run_id!r}, got run {current.id!r} already active in this process; "
                    "finish it first, or leave run_id unset to log into it"
                )
            self._run = current
        elif run_id is not None:
            if _offline(wandb, mode):
                raise TokcalError(
                    f"W&B cannot resume an offline run: expected WANDB_MODE=online to attach to run {run_id!r}, "
                    "got offline. Upload the offline run with 'wandb sync <its folder>', then attach online; "
                    "or log to a new run"
                )
            try:
                self._run = wandb.init(
                    id=run_id, project=project, entity=entity, resume="must", mode=mode, dir=directory
                )
            except wandb.errors.Error as exc:
                where = "/".join(x for x in (entity, project) if x) or "the default project"
                raise TokcalError(f"could not attach to W&B run {run_id!r} in {where}: {redact(str(exc))}") from exc
            self._owned = True
        else:
            self._run = wandb.init(project=project, entity=entity, name=run_name, mode=mode, dir=directory)
            self._owned = True
        self._run.define_metric(STEP_METRIC)
        self._sections: set[str] = set()

    @property
    def run(self) -> Any:
        """The ``wandb`` run object."""
        return self._run

    @property
    def run_id(self) -> str:
        return self._run.id

    @property
    def offline(self) -> bool:
        return bool(self._run.offline)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "run_id": self._run.id,
            "project": self._run.project,
            "entity": self._run.entity or None,
            "mode": "offline" if self.offline else "online",
            "url": None if self.offline else self._run.url,
            "local_dir": str(self._run.settings.sync_dir),
        }

    def log_config(self, config: dict[str, Any]) -> None:
        if not isinstance(config, dict):
            raise TokcalError(f"expected config to be a dict, got {type(config).__name__}")
        self._run.config.update({"tokcal": to_jsonable(config)}, allow_val_change=True)

    def _define(self, key: str) -> None:
        section = key.split("/", 1)[0]
        if section not in self._sections:
            self._run.define_metric(f"{section}/*", step_metric=STEP_METRIC)
            self._sections.add(section)

    def log_evaluation(
        self,
        metrics: DecisionMetrics,
        step: int,
        *,
        samples: list[dict[str, Any]] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        from tracking.core.plots import figure_to_array, metric_figures

        wandb = self._wandb
        metrics = check_metrics(metrics)
        step = check_step(step)
        p = metrics.prefix
        row: dict[str, Any] = {wandb_key(k): v for k, v in finite_scalars(metrics).items()}
        for name, hist in metrics.histograms.items():
            row[wandb_key(f"{p}decision_hist_{name}")] = wandb.Histogram(
                np_histogram=(hist.counts.tolist(), hist.edges.tolist())
            )
        for fig_name, fig in metric_figures(metrics, step=step).items():
            key = wandb_key(f"{p}{FIGURE_SUFFIX.get(fig_name, fig_name)}")
            row[key] = wandb.Image(figure_to_array(fig), caption=f"step {step}")
        rows = bins_rows(metrics, step)
        if rows:
            row[wandb_key(f"{p}decision_bins")] = wandb.Table(
                columns=list(BINS_COLUMNS), data=[[r[c] for c in BINS_COLUMNS] for r in rows]
            )
        if samples is not None:
            cols = sample_columns(samples)
            data = [[step if c == "step" else to_jsonable(s.get(c)) for c in cols] for s in samples]
            row[wandb_key(f"{p}decision_sample_table")] = wandb.Table(columns=cols, data=data)
        for k, v in (tags or {}).items():
            row[wandb_key(f"{p}tag_{k}")] = str(v)
        for key in row:
            self._define(key)
        row[STEP_METRIC] = step
        self._run.log(row)  # no step=: W&B would drop steps lower than the current one

    def logged_steps(self, key: str) -> set[int]:
        """Values of ``train/global_step`` in rows that hold ``key``, read through the
        public API. Offline runs cannot be queried: this returns an empty set for them
        (and an offline run cannot be attached to for a replay in the first place)."""
        if self.offline:
            logger.debug("logged_steps(%r): not available for an offline W&B run", key)
            return set()
        wkey = wandb_key(key)
        path = "/".join(x for x in (self._run.entity, self._run.project, self._run.id) if x)
        api_run = self._wandb.Api().run(path)
        return {
            int(r[STEP_METRIC])
            for r in api_run.scan_history(keys=[wkey, STEP_METRIC])
            if r.get(wkey) is not None and r.get(STEP_METRIC) is not None
        }

    def close(self) -> None:
        """Finish the run if this tracker started it (the Trainer finishes its own)."""
        if self._owned and not self._closed:
            self._run.finish()
        self._closed = True
