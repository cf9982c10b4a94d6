"""The MLflow backend: metrics with explicit steps, step-indexed images, JSON tables.

Which run: the ``run_id`` given, else the active run (what the Trainer's MLflow
integration started), else ``MLFLOW_RUN_ID``, else a new run. Which store: the
``tracking_uri`` given, else MLflow's own choice (``MLFLOW_TRACKING_URI``, or since
MLflow 3.7 a ``sqlite:///mlflow.db`` file in the working directory).

Everything goes through ``MlflowClient`` with the run id, so logging works at any step,
out of order, and into a run that is already FINISHED (backfill). Calls are synchronous
so that a failure raises here (and is spooled) instead of in a background thread.

Per evaluation, with ``prefix="eval_"``:

* metrics ``eval_decision_ece`` ... at ``step``: the scalars that ``scalars`` picks
  (:func:`~tokcal.trackers.base.selected_scalars`), shown in the run's "Model metrics" tab;
* the figures as full-size PNG artifacts, one folder per eval set and figure, named so
  that they sort by step: ``tokcal/plots/eval/reliability/step_000120.png``,
  ``.../reliability_positive/...`` and ``.../histograms/...`` (the run's "Artifacts" tab;
  ``log_image``'s step slider showed them as thumbnails, from step 0 whether or not
  anything was logged there);
* ``tokcal/eval/bins_step_000120.json``: the bins table (columns/rows), histograms, notes,
  and every scalar of the evaluation (``scalars``), the ones not logged as metrics included;
* ``tokcal/eval/per_sample_step_000120.json``: the per-sample record
  (:mod:`tokcal.core.per_sample`), when given;
* ``tokcal/eval/samples_step_000120.json``: the per-sample table, when given;
* the evaluation's ``tags`` as run tags (MLflow tags are per run, not per step).

:func:`read_mlflow` reads that layout back (``tokcal report``): the scalars' histories,
the scalars, bins, histograms, the risk-coverage curve, notes and tags from the
``bins_step_*.json`` artifacts, and the per-sample records.
``tokcal.json`` and the spool record the tracking URI with its password as ``***``;
:func:`tracking_uri_for` asks for the real one when such a run is reopened.

Every call tokcal makes to the server is bounded (:func:`bounded_requests`): 1 retry and
a 10 s timeout per request instead of MLflow's 7 retries with back-off and 120 s, which
held a call up for minutes when the server was down. ``TOKCAL_MLFLOW_MAX_RETRIES`` and
``TOKCAL_MLFLOW_TIMEOUT`` change the bound. A server that does not answer when a run is
opened raises :class:`~tokcal.trackers.base.TrackerUnreachable`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from tokcal.core.metrics import DecisionMetrics, Histogram
from tokcal.core.per_sample import PerSample
from tokcal.core.selective import RiskCoverage
from tokcal.errors import TokcalError, first_line, require
from tokcal.io import env_vars
from tokcal.trackers.base import (
    BINS_COLUMNS,
    Point,
    Series,
    Tracker,
    TrackerUnreachable,
    bins_from_table,
    bins_rows,
    finite_scalars,
    flatten,
    is_backfilled,
    labels_from_keys,
    metric_prefixes,
    prefix_of,
    redact,
    redact_all,
    sample_columns,
    selected_scalars,
    step_name,
    to_jsonable,
)

logger = logging.getLogger(__name__)

_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_MAX_PARAM = 6000  # MLflow's limit on a param value's length


_RUN_ID = re.compile(r"[0-9a-f]{32}")  # what MLflow's run ids look like
_BINS_FILE = re.compile(r"/bins_step_\d+\.json$")
_PER_SAMPLE_FILE = re.compile(r"/per_sample_step_(\d+)\.json$")

MAX_RETRIES = 1  # per request, for tokcal's own calls (MLflow's default: 7, with back-off)
TIMEOUT_S = 10  # per request (MLflow's default: 120 s)
_F = TypeVar("_F", bound=Callable[..., Any])


def request_bounds() -> dict[str, str]:
    """The MLflow client settings for tokcal's own calls: ``TOKCAL_MLFLOW_MAX_RETRIES``
    and ``TOKCAL_MLFLOW_TIMEOUT`` when set, else :data:`MAX_RETRIES` and :data:`TIMEOUT_S`.

    Example:
        >>> request_bounds()["MLFLOW_HTTP_REQUEST_TIMEOUT"]
        '10'
    """
    retries = os.environ.get("TOKCAL_MLFLOW_MAX_RETRIES") or str(MAX_RETRIES)
    timeout = os.environ.get("TOKCAL_MLFLOW_TIMEOUT") or str(TIMEOUT_S)
    for name, value in (("TOKCAL_MLFLOW_MAX_RETRIES", retries), ("TOKCAL_MLFLOW_TIMEOUT", timeout)):
        if not value.isdigit() or (name == "TOKCAL_MLFLOW_TIMEOUT" and int(value) < 1):
            raise TokcalError(f"expected {name} to be a whole number of {'seconds >= 1' if 'TIME' in name else 'retries'}, "
                              f"got {value!r}")
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": retries,
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": timeout,
    }


@contextmanager
def bounded_requests(**more: str | None) -> Iterator[None]:
    """MLflow calls in this block give up after :func:`request_bounds`; the environment
    is put back afterwards (other MLflow users in the process keep their settings)."""
    with env_vars({**request_bounds(), **more}):
        yield


def _bounded(method: _F) -> _F:
    @wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with bounded_requests():
            return method(*args, **kwargs)

    return call  # type: ignore[return-value]


def is_unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error is the server not answering (refused, timed out, or still
    failing after the retries) rather than a refused request (no such run, bad input).

    Example:
        >>> is_unreachable(ConnectionRefusedError(111, "Connection refused")), is_unreachable(ValueError("x"))
        (True, False)
    """
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        if isinstance(node, (ConnectionError, TimeoutError)):
            return True
        if type(node).__module__.split(".")[0] in ("requests", "urllib3") and any(
            word in type(node).__name__ for word in ("Connection", "Timeout", "MaxRetry", "Retry")
        ):
            return True
        text = str(node)
        if "Max retries exceeded" in text or "Connection refused" in text or "Read timed out" in text:
            return True
        node = node.__cause__ or node.__context__
    return False


def artifact_folder(prefix: str) -> str:
    """``tokcal/eval`` for ``eval_``, ``tokcal/eval_mmlu`` for ``eval_mmlu_``."""
    return f"tokcal/{prefix.rstrip('_') or 'eval'}"


def plots_folder(prefix: str, figure: str) -> str:
    """``tokcal/plots/eval/reliability``: where the PNGs of one figure of one eval set go.

    Example:
        >>> plots_folder("eval_holdout_", "reliability")
        'tokcal/plots/eval_holdout/reliability'
    """
    return f"tokcal/plots/{prefix.rstrip('_') or 'eval'}/{figure}"


def tracking_uri_for(recorded: str | None, given: str | None, where: str) -> str | None:
    """The tracking URI to reopen a recorded run with: ``given`` (``--tracking-uri``), else
    the recorded one. A recorded URI whose password was stored as ``***`` needs the real
    one: ``given``, else ``MLFLOW_TRACKING_URI``.

    Example:
        >>> tracking_uri_for("http://127.0.0.1:5000", None, "tokcal.json")
        'http://127.0.0.1:5000'
        >>> tracking_uri_for("https://u:***@host", "https://u:pw@host", "the spool")
        'https://u:pw@host'

    Raises:
        TokcalError: the recorded URI hides a password and neither gives it.
    """
    if given:
        return given
    if recorded and "***" in recorded:
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if not env:
            raise TokcalError(
                f"{where} records the MLflow tracking URI with its password hidden ({recorded}); expected "
                "--tracking-uri or MLFLOW_TRACKING_URI to give it, got neither"
            )
        return env
    return recorded


def local_store_path(uri: str) -> Path | None:
    """The file or folder of a local MLflow store (a sqlite file, a file store's folder);
    ``None`` for a server, an in-memory database or another database.

    Example:
        >>> local_store_path("sqlite:////data/mlflow.db"), local_store_path("http://127.0.0.1:5000")
        (PosixPath('/data/mlflow.db'), None)
        >>> local_store_path("file:///data/mlruns"), local_store_path("mlruns")
        (PosixPath('/data/mlruns'), PosixPath('mlruns'))
    """
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    if uri.startswith("sqlite:"):
        rest = uri[len("sqlite:"):]
        path = rest[3:].split("?")[0] if rest.startswith("///") else ""
        return Path(path) if path and path != ":memory:" else None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path)) if parsed.path else None
    if len(parsed.scheme) <= 1:  # a plain path (or a Windows drive letter): a file store
        return Path(uri)
    return None


def store_text(uri: str) -> str:
    """The store's URI for a message (password hidden), with the absolute path of a
    relative local store, so that it says which file or folder was searched.

    Example:
        >>> store_text("http://u:pw@host:5000")
        'http://u:***@host:5000'
    """
    path = local_store_path(uri)
    shown = redact(uri)
    if path is not None and not path.is_absolute():
        shown += f" ({path.resolve()})"
    return shown


def check_store_exists(uri: str, what: str) -> None:
    """Stop before MLflow opens a local store that is not there: opening a missing sqlite
    file or file store creates an empty one, so a run looked up in the wrong folder would
    leave an empty ``mlflow.db`` behind and then not be found.

    Raises:
        TokcalError: the sqlite file or the store folder does not exist; the message names it.
    """
    path = local_store_path(uri)
    if path is not None and not path.exists():
        raise TokcalError(
            f"could not open {what}: there is no MLflow store at {store_text(uri)} (not found); expected "
            "--tracking-uri (or MLFLOW_TRACKING_URI) naming the store that holds the run, e.g. "
            "sqlite:////path/to/mlflow.db or http://host:5000"
        )


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
    options = ("tracking_uri", "experiment")
    remote = True
    report_to = "mlflow"
    source_prefix = "mlflow:"
    source_form = "mlflow:RUN_ID (or a bare MLflow run ID)"

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
        self._owned = False
        self._closed = False
        where = store_text(self._uri)
        if run_id is None and self._uri == fluent_uri and mlflow.active_run() is not None:
            run_id = mlflow.active_run().info.run_id
        if run_id is None and os.environ.get("MLFLOW_RUN_ID"):
            run_id = os.environ["MLFLOW_RUN_ID"]
        what = f"MLflow run {run_id!r}" if run_id is not None else "a new MLflow run"
        if run_id is not None:  # a lookup never creates a store (MLflow makes an empty one when opened)
            check_store_exists(self._uri, what)
        self._client = mlflow.MlflowClient(tracking_uri=self._uri)
        try:
            with bounded_requests():
                if run_id is not None:
                    run = self._client.get_run(run_id)
                else:
                    experiment_id = self._experiment_id(experiment)
                    run = self._client.create_run(experiment_id, run_name=run_name, tags={"tokcal": "1"})
                    self._owned = True
        except Exception as exc:
            if is_unreachable(exc):
                bounds = request_bounds()
                raise TrackerUnreachable(
                    f"could not open {what} at {where}: the server did not answer "
                    f"({bounds['MLFLOW_HTTP_REQUEST_MAX_RETRIES']} retry, {bounds['MLFLOW_HTTP_REQUEST_TIMEOUT']} s "
                    f"timeout; TOKCAL_MLFLOW_MAX_RETRIES/TOKCAL_MLFLOW_TIMEOUT change that): {_first_line(exc)}"
                ) from exc
            # Any other error (a malformed URI, a server that answers with something else than
            # MLflow's API) is said in one line too: its text may hold the URI's credentials.
            kind = "" if isinstance(exc, MlflowException) else f"{type(exc).__name__}: "
            raise TokcalError(f"could not open {what} at {where}: {kind}{_first_line(exc)}{_elsewhere(exc)}") from exc
        if run.info.lifecycle_stage == "deleted":  # MLflow refuses every write into it
            raise TokcalError(
                f"MLflow run {run.info.run_id} at {where} was deleted, so nothing can be logged into it; restore it "
                f"with 'mlflow runs restore --run-id {run.info.run_id}' (MLFLOW_TRACKING_URI set to that store) "
                "and try again, or name another run (--run-id)"
            )
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

    @classmethod
    def caller_context(cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The run active in this thread (MLflow keeps active runs per thread), when
        ``kwargs`` names no run and no other store. Imports nothing: without ``mlflow``
        imported there is no active run."""
        mlflow = sys.modules.get("mlflow")
        if kwargs.get("run_id") or mlflow is None:
            return {}
        active = mlflow.active_run()
        uri = kwargs.get("tracking_uri")
        if active is None or (uri is not None and uri != mlflow.get_tracking_uri()):
            return {}
        return {"run_id": active.info.run_id}

    @classmethod
    def reopen_kwargs(
        cls, described: Mapping[str, Any], overrides: Mapping[str, Any], *,
        where: str = "tokcal.json", default_local_dir: str | None = None,
    ) -> dict[str, Any]:
        """The run id and tracking URI (see :func:`tracking_uri_for`); ``experiment`` only
        when given (it names a new run's experiment)."""
        return {
            "run_id": overrides.get("run_id") or described.get("run_id"),
            "tracking_uri": tracking_uri_for(described.get("tracking_uri"), overrides.get("tracking_uri"), where),
            "experiment": overrides.get("experiment"),
        }

    @classmethod
    def location(cls, described: Mapping[str, Any]) -> str:
        return redact(str(described.get("tracking_uri") or ""))

    @classmethod
    def claims_source(cls, source: str) -> bool:
        return bool(_RUN_ID.fullmatch(source))

    @classmethod
    def read_runs(cls, address: str, overrides: Mapping[str, Any] | None = None) -> list[Series]:
        return read_mlflow(address, (overrides or {}).get("tracking_uri"))

    @classmethod
    def read_described(cls, described: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list[Series]:
        given = (overrides or {}).get("tracking_uri")
        if not described.get("run_id"):
            raise TokcalError("tokcal.json records an MLflow run that was not created yet (the server was down when "
                              "training began); expected 'tokcal sync OUTPUT_DIR' first, which creates it")
        return read_mlflow(described["run_id"], tracking_uri_for(described.get("tracking_uri"), given, "tokcal.json"))

    @property
    def started_run(self) -> bool:
        return self._owned

    def viewer(self) -> str:
        """The run's page on a server, or the ``mlflow ui`` command for a file or database store."""
        if self._uri.startswith(("http://", "https://")):
            return redact(f"{self._uri.rstrip('/')}/#/experiments/{self._experiment_id_value}/runs/{self._run_id}")
        return f"open with: mlflow ui --backend-store-uri {redact(self._uri)}"

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

    @_bounded
    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if not isinstance(config, dict):
            raise TokcalError(f"expected config to be a dict, got {type(config).__name__}")
        config = redact_all(to_jsonable(config))  # the URI's credentials never reach the server
        existing = self._client.get_run(self._run_id).data.params
        new: list[Any] = []
        changed: list[str] = []
        for key, value in flatten(config, "tokcal.").items():
            text = value if isinstance(value, str) else json.dumps(value)
            text = text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."
            if key not in existing:
                new.append(Param(key, text))
            elif existing[key] != text:
                changed.append(key)
        for i in range(0, len(new), 100):
            self._client.log_batch(self._run_id, params=new[i : i + 100], synchronous=True)
        self._client.log_dict(self._run_id, config, "tokcal/config.json")
        if changed:
            logger.warning(
                "MLflow params cannot change, so %s keep their earlier values in run %s; "
                "the new settings are in the artifact tokcal/config.json",
                ", ".join(sorted(changed)), self._run_id,
            )

    @_bounded
    def _write_evaluation(
        self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None,
        per_sample: PerSample | None, tags: dict[str, Any], scalars: str | tuple[str, ...] = "all",
    ) -> None:
        from mlflow.entities import Metric, RunTag

        from tokcal.core.plots import figure_to_png, metric_figures

        stamp = int(time.time() * 1000)
        run = self._run_id
        # A cheap server call first: when the server is down, nothing of this evaluation
        # is written (artifacts can go straight to the artifact store), so a replay from
        # the spool does not log the same image twice.
        run_tags = [RunTag("tokcal", "1")] + [RunTag(str(k), str(v)) for k, v in tags.items()]
        self._client.log_batch(run, tags=run_tags, synchronous=True)
        with tempfile.TemporaryDirectory(prefix="tokcal-plots-") as tmp:
            for fig_name, fig in metric_figures(metrics, step=step).items():
                local = Path(tmp) / fig_name / f"{step_name(step)}.png"
                local.parent.mkdir()
                local.write_bytes(figure_to_png(fig))
                self._client.log_artifact(run, str(local), plots_folder(metrics.prefix, fig_name))
        folder = artifact_folder(metrics.prefix)
        table = bins_table(metrics, step, tags)
        self._client.log_dict(run, to_jsonable(table), f"{folder}/bins_{step_name(step)}.json")
        if per_sample is not None:
            self._client.log_text(run, per_sample.to_json().decode("utf-8"), f"{folder}/per_sample_{step_name(step)}.json")
        if samples is not None:
            cols = sample_columns(samples)
            rows = [[step if c == "step" else row.get(c) for c in cols] for row in samples]
            self._client.log_dict(
                run, to_jsonable({"step": step, "columns": cols, "data": rows}),
                f"{folder}/samples_{step_name(step)}.json",
            )
        # Scalars last: when they are in the run, so is the rest of the evaluation.
        points = [Metric(k, v, stamp, step) for k, v in selected_scalars(metrics, scalars).items()]
        for i in range(0, len(points), _BATCH):
            self._client.log_batch(run, metrics=points[i : i + _BATCH], synchronous=True)

    @_bounded
    def logged_steps(self, key: str) -> set[int]:
        return {int(m.step) for m in self._client.get_metric_history(self._run_id, key)}

    def close(self) -> None:
        """End the run with status FINISHED if this tracker created it."""
        if self._owned and not self._closed:
            self.finish_run()
        self._closed = True

    def close_failed(self) -> None:
        """End the run with status FAILED if this tracker created it."""
        if self._owned and not self._closed:
            self.finish_run("FAILED")
        self._closed = True

    def finish_run(self, status: str = "FINISHED") -> None:
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise TokcalError(f"expected an MLflow run status FINISHED, FAILED or KILLED, got {status!r}")
        # MLflow prints "View run ... at: <tracking URI>" here, password included; print a
        # redacted link instead.
        with bounded_requests(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true"):
            self._client.set_terminated(self._run_id, status)
        if self._uri.startswith(("http://", "https://")):
            url = f"{self._uri.rstrip('/')}/#/experiments/{self._experiment_id_value}/runs/{self._run_id}"
            logger.info("MLflow run: %s", redact(url))


def _first_line(exc: BaseException) -> str:
    return redact(first_line(exc))


def _elsewhere(exc: BaseException) -> str:
    """For a run that the store does not hold: where else to look."""
    if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
        return "; only that store was searched: pass --tracking-uri if the run is in another"
    return ""


# ------------------------------------------------------------------ the bins artifact


def bins_table(metrics: DecisionMetrics, step: int, tags: Mapping[str, Any]) -> dict[str, Any]:
    """``tokcal/<prefix>/bins_step_N.json``: what the metric histories do not hold."""
    return {
        "step": step,
        "labels": metrics.labels,
        "columns": list(BINS_COLUMNS),
        "data": [[row[c] for c in BINS_COLUMNS] for row in bins_rows(metrics, step)],
        "histograms": {k: h.to_dict() for k, h in metrics.histograms.items()},
        "scalars": finite_scalars(metrics),
        "risk_coverage": metrics.risk_coverage.to_dict() if metrics.risk_coverage else None,
        "notes": metrics.notes,
        "tags": dict(tags),
    }


def point_from(step: int, prefix: str, scalars: dict[str, float], table: Mapping[str, Any],
               per_sample: PerSample | None = None) -> Point:
    """One evaluation back from its scalars, its :func:`bins_table` (``{}`` when the
    artifact is missing: scalars only, label keys from the metric names) and its
    per-sample record. The table's scalars (those not logged as metrics) come first; the
    metric histories win where both have one."""
    cols, data = table.get("columns") or [], table.get("data") or []
    scalars = {**(table.get("scalars") or {}), **scalars}
    metrics = DecisionMetrics(
        labels=list(table.get("labels") or labels_from_keys(scalars, prefix)), prefix=prefix, scalars=scalars,
        reliability=bins_from_table(cols, data, "top_label"),
        positive_reliability=bins_from_table(cols, data, "positive"),
        histograms={k: Histogram.from_dict(h) for k, h in (table.get("histograms") or {}).items()},
        notes=list(table.get("notes") or []),
        risk_coverage=RiskCoverage.from_dict(table["risk_coverage"]) if table.get("risk_coverage") else None,
    )
    return Point(step, metrics, is_backfilled(table.get("tags")), per_sample)


# ------------------------------------------------------------------------ reading back


def read_mlflow(run_id: str, tracking_uri: str | None = None) -> list[Series]:
    """An MLflow run: one series per metric prefix that tokcal logged into it.

    Scalars come from the metric histories; reliability bins, histograms and the backfill
    marker from the ``tokcal/<prefix>/bins_step_*.json`` artifacts.

    Raises:
        TokcalError: the run cannot be opened or holds no tokcal metrics.

    Example:
        >>> series = read_mlflow("4f0c2b9e8d7a4c1b9e0f1a2b3c4d5e6f", "sqlite:///mlflow.db")  # doctest: +SKIP
    """
    with bounded_requests():
        return _read_mlflow(run_id, tracking_uri)


def _read_mlflow(run_id: str, tracking_uri: str | None) -> list[Series]:
    mlflow = require("mlflow", "mlflow")
    from mlflow.exceptions import MlflowException

    uri = tracking_uri or mlflow.get_tracking_uri()
    check_store_exists(uri, f"MLflow run {run_id!r}")
    client = mlflow.MlflowClient(tracking_uri=uri)
    where = store_text(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TokcalError(f"could not open MLflow run {run_id!r} at {where}: {_first_line(exc)}"
                          f"{_elsewhere(exc)}") from exc
    keys = list(run.data.metrics)
    prefixes = metric_prefixes(keys)
    if not prefixes:
        raise TokcalError(f"MLflow run {run_id} at {where} has no tokcal metrics (no '*decision_samples' key)")
    name = run.info.run_name or run_id[:8]
    out = []
    with tempfile.TemporaryDirectory(prefix="tokcal-report-") as tmp:
        for prefix in prefixes:
            scalars: dict[int, dict[str, float]] = {}
            for key in keys:
                if prefix_of(key, prefixes) == prefix:
                    for m in client.get_metric_history(run_id, key):
                        scalars.setdefault(int(m.step), {})[key] = float(m.value)
            tables, records = _artifacts(client, run_id, artifact_folder(prefix), tmp, MlflowException)
            points = [point_from(step, prefix, scalars[step], tables.get(step, {}), records.get(step))
                      for step in sorted(scalars)]
            out.append(Series.of(f"mlflow {name} · {prefix.rstrip('_')}", points, f"mlflow:{run_id} at {where}"))
    return out


def _artifacts(client: Any, run_id: str, folder: str, tmp: str,
               error: type[Exception]) -> tuple[dict[int, dict[str, Any]], dict[int, PerSample]]:
    """The ``bins_step_*.json`` tables and ``per_sample_step_*.json`` records in ``folder``,
    by step (none when the folder is missing)."""
    try:
        listed = [f.path for f in client.list_artifacts(run_id, folder)]
    except error:
        listed = []
    bins = [f for f in listed if _BINS_FILE.search(f)]
    per_sample = {int(m.group(1)): f for f in listed if (m := _PER_SAMPLE_FILE.search(f))}
    tables: dict[int, dict[str, Any]] = {}
    records: dict[int, PerSample] = {}
    if bins or per_sample:
        with env_vars({"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}):
            local = Path(client.download_artifacts(run_id, folder, tmp))
        for f in bins:
            table = json.loads((local / Path(f).name).read_text(encoding="utf-8"))
            tables[int(table["step"])] = table
        for step, f in per_sample.items():
            records[step] = PerSample.from_json((local / Path(f).name).read_bytes(), where=f"MLflow artifact {f}")
    return tables, records

