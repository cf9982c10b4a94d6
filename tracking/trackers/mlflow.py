"""The MLflow backend: metrics with explicit steps, step-indexed images, JSON tables.

Which run: the ``run_id`` given, else the active run (what the Trainer's MLflow
integration started), else ``MLFLOW_RUN_ID``, else a new run. Which store: the
``tracking_uri`` given, else MLflow's own choice (``MLFLOW_TRACKING_URI``, or since
MLflow 3.7 a ``sqlite:///mlflow.db`` file in the working directory).

Everything goes through ``MlflowClient`` with the run id, so logging works at any step,
out of order, and into a run that is already FINISHED (backfill). Calls are synchronous
so that a failure raises here (and is spooled) instead of in a background thread.

Per evaluation, with ``prefix="eval_"``:

* metrics ``eval_decision_ece`` ... at ``step``;
* images ``eval_decision_reliability``, ``eval_decision_reliability_positive`` and
  ``eval_decision_histograms`` at ``step`` (the UI's step slider);
* ``tokcal/eval/bins_step_000120.json``: the bins table (columns/rows), histograms, notes;
* ``tokcal/eval/samples_step_000120.json``: the per-sample table, when given;
* the evaluation's ``tags`` as run tags (MLflow tags are per run, not per step).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from tracking.core.metrics import DecisionMetrics
from tracking.errors import TokcalError, first_line, require
from tracking.trackers.base import (
    BINS_COLUMNS,
    FIGURE_SUFFIX,
    Tracker,
    bins_rows,
    check_metrics,
    check_step,
    finite_scalars,
    flatten,
    redact,
    sample_columns,
    step_name,
    to_jsonable,
)

logger = logging.getLogger(__name__)

_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_MAX_PARAM = 6000  # MLflow's limit on a param value's length


def artifact_folder(prefix: str) -> str:
    """``tokcal/eval`` for ``eval_``, ``tokcal/eval_mmlu`` for ``eval_mmlu_``."""
    return f"tokcal/{prefix.rstrip('_') or 'eval'}"


class MlflowTracker(Tracker):
    """Log to an MLflow run through ``MlflowClient``.

    Args:
        run_id: attach to this run (any status, FINISHED included).
        tracking_uri: the store; MLflow's default when ``None``.
        experiment: experiment name for a new run (created if missing); otherwise
            ``MLFLOW_EXPERIMENT_ID`` / ``MLFLOW_EXPERIMENT_NAME`` or the Default experiment.
        run_name: name of a new run.

    Example:
        >>> tracker = MlflowTracker(tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
        >>> tracker.log_evaluation(metrics, step=120)  # doctest: +SKIP
        >>> tracker.close()  # ends the run only if this tracker created it  # doctest: +SKIP
    """

    name = "mlflow"

    def __init__(
        self,
        *,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
    ) -> None:
        mlflow = require("mlflow", "mlflow")
        from mlflow.exceptions import MlflowException

        fluent_uri = mlflow.get_tracking_uri()
        self._uri = tracking_uri or fluent_uri
        self._client = mlflow.MlflowClient(tracking_uri=self._uri)
        self._owned = False
        self._closed = False
        where = redact(self._uri)
        if run_id is None and self._uri == fluent_uri and mlflow.active_run() is not None:
            run_id = mlflow.active_run().info.run_id
        if run_id is None and os.environ.get("MLFLOW_RUN_ID"):
            run_id = os.environ["MLFLOW_RUN_ID"]
        try:
            if run_id is not None:
                run = self._client.get_run(run_id)
            else:
                experiment_id = self._experiment_id(experiment)
                run = self._client.create_run(experiment_id, run_name=run_name, tags={"tokcal": "1"})
                self._owned = True
        except MlflowException as exc:
            what = f"run {run_id!r}" if run_id is not None else "a new run"
            raise TokcalError(f"could not open MLflow {what} at {where}: {_first_line(exc)}") from exc
        self._run_id: str = run.info.run_id
        self._experiment_id_value: str = run.info.experiment_id

    def _experiment_id(self, experiment: str | None) -> str:
        name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if experiment is None and os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        if not name:
            return "0"  # the Default experiment every MLflow store has
        found = self._client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self._client.create_experiment(name)

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def client(self) -> Any:
        """The ``MlflowClient`` this tracker logs with."""
        return self._client

    @property
    def tracking_uri(self) -> str:
        """The store's URI (may hold credentials: pass it through :func:`redact` to show it)."""
        return self._uri

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "run_id": self._run_id,
            "tracking_uri": redact(self._uri),
            "experiment_id": self._experiment_id_value,
            "local_dir": None,
        }

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if not isinstance(config, dict):
            raise TokcalError(f"expected config to be a dict, got {type(config).__name__}")
        existing = self._client.get_run(self._run_id).data.params
        new: list[Any] = []
        changed: list[str] = []
        for key, value in flatten(to_jsonable(config), "tokcal.").items():
            text = value if isinstance(value, str) else json.dumps(value)
            text = text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."
            if key not in existing:
                new.append(Param(key, text))
            elif existing[key] != text:
                changed.append(key)
        for i in range(0, len(new), 100):
            self._client.log_batch(self._run_id, params=new[i : i + 100], synchronous=True)
        self._client.log_dict(self._run_id, to_jsonable(config), "tokcal/config.json")
        if changed:
            logger.warning(
                "MLflow params cannot change, so %s keep their earlier values in run %s; "
                "the new settings are in the artifact tokcal/config.json",
                ", ".join(sorted(changed)), self._run_id,
            )

    def log_evaluation(
        self,
        metrics: DecisionMetrics,
        step: int,
        *,
        samples: list[dict[str, Any]] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, RunTag

        from tracking.core.plots import figure_to_array, metric_figures

        metrics = check_metrics(metrics)
        step = check_step(step)
        stamp = int(time.time() * 1000)
        run = self._run_id
        # A cheap server call first: when the server is down, nothing of this evaluation
        # is written (artifacts can go straight to the artifact store), so a replay from
        # the spool does not log the same image twice.
        run_tags = [RunTag("tokcal", "1")] + [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
        self._client.log_batch(run, tags=run_tags, synchronous=True)
        for fig_name, fig in metric_figures(metrics, step=step).items():
            key = f"{metrics.prefix}{FIGURE_SUFFIX.get(fig_name, fig_name)}"
            self._client.log_image(run, figure_to_array(fig), key=key, step=step, timestamp=stamp, synchronous=True)
        folder = artifact_folder(metrics.prefix)
        table = {
            "step": step,
            "labels": metrics.labels,
            "columns": list(BINS_COLUMNS),
            "data": [[row[c] for c in BINS_COLUMNS] for row in bins_rows(metrics, step)],
            "histograms": {k: h.to_dict() for k, h in metrics.histograms.items()},
            "notes": metrics.notes,
            "tags": dict(tags or {}),
        }
        self._client.log_dict(run, to_jsonable(table), f"{folder}/bins_{step_name(step)}.json")
        if samples is not None:
            cols = sample_columns(samples)
            rows = [[step if c == "step" else row.get(c) for c in cols] for row in samples]
            self._client.log_dict(
                run, to_jsonable({"step": step, "columns": cols, "data": rows}),
                f"{folder}/samples_{step_name(step)}.json",
            )
        # Scalars last: when they are in the run, so is the rest of the evaluation.
        points = [Metric(k, v, stamp, step) for k, v in finite_scalars(metrics).items()]
        for i in range(0, len(points), _BATCH):
            self._client.log_batch(run, metrics=points[i : i + _BATCH], synchronous=True)

    def logged_steps(self, key: str) -> set[int]:
        return {int(m.step) for m in self._client.get_metric_history(self._run_id, key)}

    def close(self) -> None:
        """End the run with status FINISHED if this tracker created it."""
        if self._owned and not self._closed:
            self.finish_run()
        self._closed = True

    def finish_run(self) -> None:
        # MLflow prints "View run ... at: <tracking URI>" here, password included; print a
        # redacted link instead.
        previous = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        try:
            self._client.set_terminated(self._run_id, "FINISHED")
        finally:
            if previous is None:
                del os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"]
            else:
                os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = previous
        if self._uri.startswith(("http://", "https://")):
            url = f"{self._uri.rstrip('/')}/#/experiments/{self._experiment_id_value}/runs/{self._run_id}"
            logger.info("MLflow run: %s", redact(url))


def _first_line(exc: BaseException) -> str:
    return redact(first_line(exc))
