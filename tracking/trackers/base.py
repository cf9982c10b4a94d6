"""The tracker interface every backend implements, the backend registry, and helpers.

A tracker is one run in one backend. ``log_evaluation`` pushes everything about one
evaluation at one training step: the scalars, the histograms, the reliability
diagram(s), the bins as a table and, optionally, a per-sample table. Steps are explicit
and may come in any order (backfill adds points for old checkpoints later).

Each backend is one module, ``tracking/trackers/<name>.py``, with one :class:`Tracker`
subclass that knows everything about it: how it writes (``_write_evaluation``), which
options it takes (``options``), how a run is described in ``tokcal.json`` and the spool
(``describe``) and reopened from there (``reopen_kwargs``), and how its evaluations are
read back (``logged_steps``, ``read_runs``, ``read_described``). The registry below maps
a backend name to that class; :func:`tokcal.trackers.open_tracker`, backfill's targets,
``tokcal sync``, ``tokcal report`` and the callback only look names up in it.

Example:
    >>> backend_names()
    ('local', 'mlflow', 'wandb', 'tensorboard')
    >>> backend_class("mlflow").options
    ('tracking_uri', 'experiment')
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tokcal.core.metrics import DecisionMetrics, ReliabilityBins, compute_metrics
from tokcal.core.per_sample import PerSample
from tokcal.errors import TokcalError
from tokcal.io import to_jsonable, write_atomic  # noqa: F401  (re-exported for the backends)

DEFAULT_LOCAL_DIR = "tokcal-runs"  # the local store, and the parent of the default spool folder
LOCK_DIR_ENV = "TOKCAL_LOCK_DIR"  # where the writer locks of remote runs live (default: a folder in the temp dir)
WRITER_WAIT_ENV = "TOKCAL_WRITER_WAIT"  # seconds backfill and sync wait for a run's writer lock (default 30)


def writer_wait() -> float:
    """How long backfill and sync wait for a run's writer lock: a live training holds it for
    one evaluation's write at a time (a second or so), so they wait that out instead of
    failing; ``TOKCAL_WRITER_WAIT`` (seconds) changes it."""
    try:
        return max(0.0, float(os.environ.get(WRITER_WAIT_ENV, "30")))
    except ValueError:
        raise TokcalError(f"expected {WRITER_WAIT_ENV} to be a number of seconds, "
                          f"got {os.environ[WRITER_WAIT_ENV]!r}") from None


class TrackerUnreachable(TokcalError):
    """The backend's server did not answer (refused, timed out, 5xx after the retries).

    A backend raises it instead of a plain :class:`TokcalError` when the failure is the
    connection, not the request: ``open_tracker`` then keeps the run's creation and its
    calls in the spool (see :class:`~tokcal.trackers.spool.SpoolingTracker`) instead of
    failing, and ``tokcal sync`` creates the run later.
    """


class TrackerDisabled(TokcalError):
    """The backend is switched off where the run is opened (``WANDB_MODE=disabled``):
    nothing written to it would be kept. The training callback logs to the local store
    instead, with one warning."""


#: The tag every backfilled evaluation carries (``tokcal backfill``); the readers set
#: :attr:`Point.backfilled` from it.
BACKFILL_TAG = "tokcal_backfill"
MARKER: dict[str, str] = {BACKFILL_TAG: "true"}

# Names of the figures that ``tokcal.core.plots.metric_figures`` draws, and the suffix each
# one gets in image keys and file names (``eval_decision_reliability``).
FIGURE_SUFFIX: dict[str, str] = {
    "reliability": "decision_reliability",
    "reliability_positive": "decision_reliability_positive",
    "histograms": "decision_histograms",
}

_SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "WANDB_API_KEY",
    "DATABRICKS_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
)
# The user-info of a URI (``scheme://USER:PASSWORD@host``, ``scheme://TOKEN@host``): up to
# the last "@" before the path, query or fragment.
_URI_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#'\"<>]+)@")
# A query (or ";") parameter whose name says it holds a credential: token, access_token,
# api_key, apikey, key, secret, client_secret, password, pwd, sig, signature, credential,
# auth ... in any case (X-Amz-Signature, Token, API_KEY).
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:[A-Za-z0-9]+[_.\-])*(?:access|api|auth|client|private|session|id|refresh)?"
    r"(?:token|key|secret|password|passwd|pwd|pass|sig|signature|credential|auth|sas)"
    r"(?:[_.\-][A-Za-z0-9_.\-]*)?=)[^&;\s#'\"<>]*",
    re.IGNORECASE,
)
MASK = "***"  # what a credential is shown as


def _mask_userinfo(m: re.Match[str]) -> str:
    user, colon, _password = m.group("userinfo").partition(":")
    # user:password keeps the user name; a lone user name may itself be a token (http://TOKEN@host)
    return f"{m.group('scheme')}{user}:{MASK}@" if colon else f"{m.group('scheme')}{MASK}@"


def redact(text: str | None) -> str:
    """Hide every credential in a URI, or in any message that may contain one.

    The one place that knows what a credential looks like, used on everything tokcal
    prints, stores or sends:

    * the password of a URI's user-info (``https://alice:s3cret@host`` -> ``alice:***@``);
    * a lone user name, which services use for a token (``https://TOKEN@host`` -> ``***@``);
    * query parameters whose name says they hold one, in any case (``token``,
      ``access_token``, ``api_key``, ``key``, ``secret``, ``password``, ``sig``,
      ``X-Amz-Signature`` ...);
    * the values of credential environment variables (``MLFLOW_TRACKING_PASSWORD``,
      ``MLFLOW_TRACKING_TOKEN``, ``WANDB_API_KEY`` ...).

    A URI redacted this way still shows where the run lives (scheme, host, path); a run
    recorded with one is reopened with the real URI (``--tracking-uri``).

    Example:
        >>> redact("https://alice:s3cret@mlflow.example.com/?token=abc&x=1")
        'https://alice:***@mlflow.example.com/?token=***&x=1'
        >>> redact("could not reach http://ghp_abc123@host:5000/api?API_KEY=k&Sig=s")
        'could not reach http://***@host:5000/api?API_KEY=***&Sig=***'
    """
    if text is None:
        return ""
    out = _URI_USERINFO.sub(_mask_userinfo, str(text))
    out = _QUERY_SECRET.sub(lambda m: f"{m.group('head')}{MASK}", out)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            out = out.replace(value, MASK)
    return out


def redact_all(value: Any) -> Any:
    """``value`` with :func:`redact` applied to every string in it (nested dicts, lists,
    tuples; keys included): the settings a run records, a description, a spool entry.

    Example:
        >>> redact_all({"tracking_uri": "http://tok@host", "spec": {"labels": ["A", "B"]}, "n": 3})
        {'tracking_uri': 'http://***@host', 'spec': {'labels': ['A', 'B']}, 'n': 3}
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact_all(k) if isinstance(k, str) else k: redact_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_all(v) for v in value]
    return value


def check_step(step: Any) -> int:
    """A training step must be an integer >= 0 (``numpy`` integers are fine)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise TokcalError(f"expected step to be an integer >= 0, got {step!r}")
    return int(step)


def check_metrics(metrics: Any) -> DecisionMetrics:
    if not isinstance(metrics, DecisionMetrics):
        raise TokcalError(f"expected metrics to be a DecisionMetrics, got {type(metrics).__name__}")
    return metrics


def finite_scalars(metrics: DecisionMetrics) -> dict[str, float]:
    """The scalars with a value: NaN marks a metric that could not be computed."""
    return {k: float(v) for k, v in metrics.scalars.items() if not math.isnan(float(v))}


#: The scalars logged as metric series by default (``metrics="default"``), without the
#: metric prefix. The headline first: the mean probability of each label
#: (``avg_p_<label>``, added per label), how much probability the labels hold
#: (``decision_prob_mass``, its 5th percentile ``decision_mass_p05``), the mean raw
#: probability of the predicted label (``decision_confidence``) and ``decision_accuracy``.
#: Then one metric per question a dashboard answers: is it calibrated (``decision_ece``, its
#: binning-free twin ``decision_smece``, ``decision_brier``, ``decision_nll``), does it rank and separate the labels
#: (``decision_auroc``, ``decision_aurc``), is it right on both labels
#: (``decision_balanced_accuracy``, ``decision_mcc``), are the counts as expected
#: (``decision_samples``, ``decision_missing``, ``decision_nonfinite``), and is it forgetting
#: (``decision_flips_to_wrong``, ``decision_flips_to_right``, ``decision_forgotten``, from
#: the second evaluation on). The rest (per-label precision and recall, MCE, macro F1,
#: accuracy at coverage, temperature ...) stays in the evaluation's stored record.
HEADLINE_METRICS: tuple[str, ...] = (
    "decision_prob_mass", "decision_confidence", "decision_accuracy",
    "decision_ece", "decision_smece", "decision_brier", "decision_nll", "decision_auroc", "decision_balanced_accuracy",
    "decision_mcc", "decision_aurc", "decision_mass_p05", "decision_samples", "decision_missing", "decision_nonfinite",
    "decision_flips_to_wrong", "decision_flips_to_right", "decision_forgotten",
    # generate mode only (the model's own answers beside the teacher-forced ones)
    "decision_gen_accuracy", "decision_gen_prob_mass", "decision_gen_missing", "decision_gen_agreement",
)
#: Logged whatever the selection: it marks an evaluation (readers find the metric
#: prefixes and the logged steps by it).
ALWAYS_LOGGED = "decision_samples"
SCALAR_SETS = ("default", "all")
_TOKCAL_METRIC = re.compile(r"^(decision_|avg_p_|avg_gen_p_)[A-Za-z0-9_]+$")


def check_scalar_selection(selection: Any) -> str | tuple[str, ...]:
    """Which scalars become metric series: ``"default"`` (:data:`HEADLINE_METRICS` and
    ``avg_p_<label>``), ``"all"``, or a list of metric names without the prefix
    (``["decision_ece", "avg_p_accept"]``).

    Example:
        >>> check_scalar_selection(["decision_ece", "decision_ece"]), check_scalar_selection("all")
        (('decision_ece',), 'all')
    """
    if isinstance(selection, str):
        if selection in SCALAR_SETS:
            return selection
        raise TokcalError(f"expected metrics 'default', 'all' or a list of metric names, got {selection!r}")
    if not isinstance(selection, (list, tuple)) or not selection or not all(isinstance(x, str) for x in selection):
        raise TokcalError(f"expected metrics 'default', 'all' or a list of metric names, got {selection!r}")
    bad = [x for x in selection if not _TOKCAL_METRIC.match(x)]
    if bad:
        raise TokcalError(f"expected metric names without the prefix, like 'decision_ece' or 'avg_p_accept', "
                          f"got {bad}")
    return tuple(dict.fromkeys(selection))


def selected_scalars(metrics: DecisionMetrics, selection: str | Sequence[str] = "all") -> dict[str, float]:
    """The finite scalars of ``metrics`` that ``selection`` (see
    :func:`check_scalar_selection`) logs as metric series; ``decision_samples`` always.

    Example:
        >>> from tokcal.core.metrics import compute_metrics
        >>> m = compute_metrics(np.array([[0.8, 0.1], [0.3, 0.6]]), np.array([0, 1]), ["Accept", "Reject"])
        >>> sorted(selected_scalars(m, ["decision_ece"]))
        ['eval_decision_ece', 'eval_decision_samples']
    """
    selection = check_scalar_selection(selection)
    values = finite_scalars(metrics)
    if selection == "all":
        return values
    p = metrics.prefix
    names = HEADLINE_METRICS if selection == "default" else selection
    wanted = {f"{p}{x}" for x in (*names, ALWAYS_LOGGED)}
    if selection == "default":
        wanted |= {k for k in values if k.startswith(f"{p}avg_p_")}
    return {k: v for k, v in values.items() if k in wanted}


def scalar_names(labels: Sequence[str]) -> list[str]:
    """Every scalar name (without prefix) that an evaluation with these labels can log,
    the flips' included.

    Example:
        >>> "avg_p_accept" in scalar_names(["Accept", "Reject"])
        True
    """
    k = len(labels)
    probs = np.full((2 * k, k), 0.5 / k)
    probs[np.arange(2 * k), np.arange(2 * k) % k] = 0.5 + 0.25 / k
    m = compute_metrics(probs, np.arange(2 * k) % k, list(labels), prefix="")
    return sorted({*m.scalars, "decision_flips_to_wrong", "decision_flips_to_right", "decision_forgotten"})


def step_name(step: int) -> str:
    """``step_000120``: zero-padded so that file names sort by step."""
    return f"step_{step:06d}"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: ``{"spec": {"labels": [...]}}`` -> ``spec.labels``."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def bins_rows(metrics: DecisionMetrics, step: int) -> list[dict[str, Any]]:
    """The reliability bins of one evaluation as rows with ``step`` and ``curve`` columns.

    ``curve`` is ``top_label`` (confidence of the predicted label) or ``positive``
    (binary specs: mean q(positive) against the fraction that truly is positive).
    """
    rows: list[dict[str, Any]] = []
    for curve, bins in (("top_label", metrics.reliability), ("positive", metrics.positive_reliability)):
        if bins is not None:
            rows.extend({"step": step, "curve": curve, **row} for row in bins.rows())
    return rows


BINS_COLUMNS: tuple[str, ...] = ("step", "curve", "bin", "lower", "upper", "count", "confidence", "accuracy")


def sample_columns(samples: Iterable[dict[str, Any]]) -> list[str]:
    """Column names of a per-sample table: ``step`` first, then keys in first-seen order."""
    cols: dict[str, None] = {"step": None}
    for row in samples:
        if not isinstance(row, dict):
            raise TokcalError(f"expected samples to be a list of dicts, got an item of type {type(row).__name__}")
        cols.update(dict.fromkeys(str(k) for k in row))
    return list(cols)


def dumps_line(record: dict[str, Any]) -> bytes:
    """One JSON line (no NaN, which is not JSON), newline-terminated."""
    return (json.dumps(to_jsonable(record), allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")


def check_per_sample(per_sample: Any, metrics: DecisionMetrics) -> PerSample | None:
    """The per-sample record of one evaluation: ``None``, or a :class:`PerSample` with the metrics' labels."""
    if per_sample is None:
        return None
    if not isinstance(per_sample, PerSample):
        raise TokcalError(f"expected per_sample to be a PerSample or None, got {type(per_sample).__name__}")
    if list(per_sample.labels) != list(metrics.labels):
        raise TokcalError(f"expected per_sample labels {metrics.labels} (the metrics'), got {per_sample.labels}")
    n = metrics.scalars.get(f"{metrics.prefix}decision_samples")
    if n is not None and not math.isnan(float(n)) and int(n) != len(per_sample):
        raise TokcalError(f"expected a per_sample record of {int(n)} decisions (the metrics'), got {len(per_sample)}")
    return per_sample


def check_tags(tags: Any) -> dict[str, Any]:
    """The tags of one evaluation: a mapping of names to values (``None`` means none)."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise TokcalError(f"expected tags to be a dict of names to values, got {type(tags).__name__}")
    return dict(tags)


def bins_from_table(columns: Sequence[str], data: Iterable[Sequence[Any]], curve: str) -> ReliabilityBins | None:
    """The reliability bins of one ``curve`` back from a table that :func:`bins_rows` wrote
    (``columns`` and rows as lists); ``None`` when the table has no such curve.

    Example:
        >>> m = DecisionMetrics.from_dict({"labels": ["A", "B"], "prefix": "eval_", "scalars": {},
        ...     "reliability": {"edges": [0.0, 0.5, 1.0], "counts": [1, 2], "confidence": [0.3, 0.8],
        ...                     "accuracy": [0.0, 1.0]}})
        >>> rows = bins_rows(m, step=5)
        >>> back = bins_from_table(BINS_COLUMNS, [[r[c] for c in BINS_COLUMNS] for r in rows], "top_label")
        >>> back.counts.tolist(), back.edges.tolist()
        ([1, 2], [0.0, 0.5, 1.0])
    """
    rows = [dict(zip(columns, r)) for r in data]
    rows = sorted((r for r in rows if r.get("curve") == curve), key=lambda r: r["bin"])
    if not rows:
        return None
    edges = [rows[0]["lower"]] + [r["upper"] for r in rows]
    return ReliabilityBins.from_dict({"edges": edges, "counts": [r["count"] for r in rows],
                                      "confidence": [r["confidence"] for r in rows],
                                      "accuracy": [r["accuracy"] for r in rows]})


# ------------------------------------------------------------------ read-back types


@dataclass
class Point:
    """One evaluation read back from a run: its step, metrics, whether backfill logged it,
    and its per-sample record when the run holds one."""

    step: int
    metrics: DecisionMetrics
    backfilled: bool = False
    per_sample: PerSample | None = None

    def scalar(self, name: str) -> float:
        """``name`` without prefix (``decision_ece``); NaN when absent."""
        v = self.metrics.scalars.get(f"{self.metrics.prefix}{name}")
        return math.nan if v is None else float(v)


@dataclass
class Series:
    """The evaluations of one run under one metric prefix, in step order."""

    name: str
    points: list[Point]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return self.points[0].metrics.labels if self.points else []

    @property
    def steps(self) -> list[int]:
        return [p.step for p in self.points]

    @classmethod
    def of(cls, name: str, points: Iterable[Point], source: str = "", notes: Sequence[str] = ()) -> "Series":
        """A series in step order; a step logged twice (re-scored, ``--force``) counts once: the last one.

        Example:
            >>> m = DecisionMetrics(["A", "B"], "eval_", {}, None)
            >>> Series.of("run", [Point(20, m), Point(10, m), Point(20, m, True)]).steps
            [10, 20]
        """
        by_step: dict[int, Point] = {}
        for p in points:
            by_step[p.step] = p
        return cls(name, [by_step[s] for s in sorted(by_step)], source, list(notes))


def is_backfilled(tags: Mapping[str, Any] | None) -> bool:
    """Whether an evaluation's tags carry :data:`MARKER`."""
    return str((tags or {}).get(BACKFILL_TAG)) == "true"


_TOKCAL_NAME = re.compile(r"^(decision_|avg_p_)")


def metric_prefixes(keys: Iterable[str]) -> list[str]:
    """Metric prefixes (``eval_``, ``eval_holdout_``) from the ``*decision_samples`` keys
    among a run's scalar names (``decision_samples`` is logged with every evaluation).

    Example:
        >>> metric_prefixes(["eval_decision_samples", "eval_holdout_decision_samples", "eval_loss"])
        ['eval_', 'eval_holdout_']
    """
    return sorted({k[: -len("decision_samples")] for k in keys if k.endswith("decision_samples")})


def prefix_of(key: str, prefixes: Sequence[str]) -> str | None:
    """The longest prefix whose tokcal metrics include ``key`` (``eval_loss`` has none).

    Example:
        >>> prefix_of("eval_holdout_decision_ece", ["eval_", "eval_holdout_"]), prefix_of("eval_loss", ["eval_"])
        ('eval_holdout_', None)
    """
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix) and _TOKCAL_NAME.match(key[len(prefix):]):
            return prefix
    return None


def labels_from_keys(scalars: Iterable[str], prefix: str) -> list[str]:
    """Label keys from ``<prefix>avg_p_<key>`` names (sorted: the order is not recorded)."""
    return sorted(k[len(prefix) + len("avg_p_"):] for k in scalars if k.startswith(f"{prefix}avg_p_"))


# ------------------------------------------------------------------------ the tracker


class Tracker(ABC):
    """One run in one tracking backend, and what the backend knows about itself.

    A backend subclasses this once, in its own module, and sets the class attributes:

    * ``name``: the backend's name (``backend="..."``, ``--backend``, ``tokcal.json``);
    * ``options``: the :func:`~tokcal.trackers.open_tracker` keyword arguments only
      this backend takes (``run_id``, ``run_name`` and ``local_dir`` are common to all);
    * ``remote``: calls can fail for reasons outside tokcal (a server); ``open_tracker``
      then wraps the tracker in a :class:`~tokcal.trackers.spool.SpoolingTracker`;
    * ``thread_safe``: the training callback may call it from its background thread
      (``False`` logs in the calling thread);
    * ``report_to``: the Hugging Face ``report_to`` integration it follows when
      ``backend="auto"``; ``None`` for none;
    * ``source_prefix``, ``source_form``: how ``tokcal report`` names one of its runs
      (``mlflow:`` and ``mlflow:RUN_ID``).

    It implements ``run_id``, ``describe``, ``log_config``, ``_write_evaluation`` and
    ``logged_steps``; and, for ``tokcal report``, ``read_runs`` and ``read_described``.
    :meth:`log_evaluation` checks the arguments once for every backend, then calls
    ``_write_evaluation``.

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> from tokcal.trackers import open_tracker
        >>> from tokcal.core.metrics import compute_metrics
        >>> m = compute_metrics(np.array([[0.8, 0.1], [0.3, 0.6]]), np.array([0, 1]), ["Accept", "Reject"])
        >>> with open_tracker("local", local_dir=tempfile.mkdtemp()) as tracker:
        ...     tracker.log_evaluation(m, step=120)
        >>> sorted(tracker.logged_steps("eval_decision_ece"))
        [120]
    """

    name: ClassVar[str] = "base"
    options: ClassVar[tuple[str, ...]] = ()
    remote: ClassVar[bool] = False
    thread_safe: ClassVar[bool] = True
    report_to: ClassVar[str | None] = None
    source_prefix: ClassVar[str | None] = None
    source_form: ClassVar[str] = ""

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(
        cls, *, run_id: str | None = None, run_name: str | None = None,
        local_dir: str | os.PathLike[str] = DEFAULT_LOCAL_DIR, **options: Any,
    ) -> "Tracker":
        """Open a run from :func:`~tokcal.trackers.open_tracker`'s arguments: the common
        ones and this backend's ``options`` (only those given). Backends whose constructor
        takes other names override this."""
        return cls(run_id=run_id, run_name=run_name, **options)  # type: ignore[call-arg]

    @classmethod
    def caller_context(cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The :func:`~tokcal.trackers.open_tracker` arguments that only the calling
        thread can tell, for a run that is then opened in another thread (the callback
        opens in its background thread): MLflow gives the run that the Trainer's
        integration made active in this thread. Default: none."""
        return {}

    @classmethod
    def reopen_kwargs(
        cls, described: Mapping[str, Any], overrides: Mapping[str, Any], *,
        where: str = "tokcal.json", default_local_dir: str | None = None,
    ) -> dict[str, Any]:
        """The :func:`~tokcal.trackers.open_tracker` arguments (without ``backend``) that
        reopen a run as :meth:`describe` recorded it (``tokcal.json``, a spool entry).

        Args:
            described: the recorded description.
            overrides: values given on the command line (``run_id``, options, ``local_dir``);
                each one that is not ``None`` wins over the recorded value.
            where: where ``described`` comes from, for error messages.
            default_local_dir: the local folder to use when neither is given.
        """
        kw = {"run_id": overrides.get("run_id") or described.get("run_id")}
        for option in cls.options:
            kw[option] = overrides.get(option) or described.get(option)
        return kw

    @classmethod
    def location(cls, described: Mapping[str, Any]) -> str:
        """Where a described run lives, for messages (credentials redacted)."""
        return ""

    # -- reading back ----------------------------------------------------------------
    @classmethod
    def claims_source(cls, source: str) -> bool:
        """Whether a ``tokcal report`` word without ``source_prefix`` names one of this
        backend's runs (a folder for the local store, a bare MLflow run id)."""
        return False

    @classmethod
    def read_runs(cls, address: str, overrides: Mapping[str, Any] | None = None) -> list[Series]:
        """The evaluations of the run(s) at ``address`` (a ``tokcal report`` word without
        ``source_prefix``), one :class:`Series` per run and metric prefix.

        ``overrides`` holds the command line's options (``tracking_uri``); a backend uses
        those it knows."""
        raise TokcalError(f"expected a backend that can be read back, got {cls.name!r}, which cannot")

    @classmethod
    def read_described(cls, described: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> list[Series]:
        """The evaluations of a run as ``tokcal.json`` describes it (see :meth:`read_runs`)."""
        raise TokcalError(f"expected a backend that can be read back, got {cls.name!r}, which cannot")

    # -- one run ---------------------------------------------------------------------
    @property
    @abstractmethod
    def run_id(self) -> str | None:
        """The backend's id of this run (``None`` before it exists)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What ``tokcal.json`` and the spool store to find this run again (credentials
        redacted): ``backend``, ``run_id``, the backend's options, ``local_dir``."""

    @abstractmethod
    def log_config(self, config: dict[str, Any]) -> None:
        """Record the tracking settings (decision spec, options) with the run."""

    def log_evaluation(
        self,
        metrics: DecisionMetrics,
        step: int,
        *,
        samples: Iterable[dict[str, Any]] | None = None,
        per_sample: PerSample | None = None,
        tags: Mapping[str, Any] | None = None,
        scalars: str | Sequence[str] = "all",
    ) -> None:
        """Push one evaluation at training step ``step``: scalars, histograms, the
        reliability diagram(s), the bins table and, if given, the per-sample record
        (``per_sample``, compact, read back by ``tokcal report``) and a readable per-sample
        table (``samples``).

        ``scalars`` picks the scalars that become metric series (charts): ``"all"``,
        ``"default"`` (:data:`HEADLINE_METRICS`) or a list of names without the prefix
        (see :func:`selected_scalars`). Every scalar stays in the evaluation's stored
        record (the local store's line, MLflow's ``bins_step_*.json`` artifact, the W&B
        run file ``tokcal/step_*_<prefix>scalars.json``), where ``tokcal report`` reads
        it back.

        Checks the arguments (a :class:`~tokcal.core.metrics.DecisionMetrics`, a step
        >= 0, samples as dicts, a :class:`~tokcal.core.per_sample.PerSample` with the
        metrics' labels, tags as a mapping) before anything is written, then calls the
        backend's ``_write_evaluation``.

        Raises:
            TokcalError: for bad arguments; the backend's own errors otherwise.
        """
        metrics = check_metrics(metrics)
        step = check_step(step)
        rows = None if samples is None else list(samples)
        if rows is not None:
            sample_columns(rows)
        selection = check_scalar_selection(scalars)
        # A backend written before the choice existed takes no ``scalars`` and logs them all.
        extra = {"scalars": selection} if _takes_scalars(type(self)) else {}
        self._write_evaluation(metrics, step, samples=rows, per_sample=check_per_sample(per_sample, metrics),
                               tags=check_tags(tags), **extra)

    @abstractmethod
    def _write_evaluation(
        self, metrics: DecisionMetrics, step: int, *, samples: list[dict[str, Any]] | None,
        per_sample: PerSample | None, tags: dict[str, Any], scalars: str | tuple[str, ...] = "all",
    ) -> None:
        """Write one evaluation whose arguments :meth:`log_evaluation` has checked;
        ``scalars`` as :func:`selected_scalars` takes it."""

    @abstractmethod
    def logged_steps(self, key: str) -> set[int]:
        """Steps at which the scalar ``key`` (tokcal's name, e.g. ``eval_decision_ece``)
        already exists in the run; used to replay and backfill without doubling points."""

    def viewer(self) -> str:
        """How a person opens this run, for the callback's first line (a folder, a URL, a
        command); credentials redacted. Default: nothing to say."""
        return ""

    @property
    def started_run(self) -> bool:
        """Whether :meth:`close` has a run to end (this tracker created it); ``False`` for a
        run it only attached to. Backends that cannot tell say ``True``."""
        return True

    def close(self) -> None:
        """Finish what this tracker started; a run it only attached to stays as it was."""

    def close_failed(self) -> None:
        """End what this tracker started as failed (the training it tracked raised); a run
        it only attached to stays as it was. Backends without run states just close."""
        self.close()

    def finish_run(self, status: str = "FINISHED") -> None:
        """Mark the run ended (``"FINISHED"`` or ``"FAILED"``) even though this tracker only
        attached to it.

        ``tokcal sync`` calls it when the tracker that started the run could not close it
        (the server was down at the end of training). Backends without run states do nothing.
        """

    def check_writable(self) -> None:
        """Raise :class:`TokcalError` now for a write that would fail for a reason visible
        before any work (a read-only store); backfill calls it before scoring. Remote
        backends cannot tell and do nothing."""

    def writer_lock(self) -> Path:
        """The lock file that lets one process at a time write into this run on this
        machine (``tokcal backfill``, ``tokcal sync``): in the temp folder by default,
        keyed by backend and run id (``TOKCAL_LOCK_DIR`` moves it); the local backend
        keeps it beside its store."""
        return lock_dir() / f"{self.name}-{_safe_name(str(self.run_id))}.lock"

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()!r})"


def _takes_scalars(cls: type[Tracker]) -> bool:
    """Whether a backend's ``_write_evaluation`` takes ``scalars`` (a backend registered from
    elsewhere may predate it)."""
    import inspect

    params = inspect.signature(cls._write_evaluation).parameters
    return "scalars" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def lock_dir() -> Path:
    """Where the writer locks of remote runs live: ``TOKCAL_LOCK_DIR``, else
    ``<temp dir>/tokcal-locks-<uid>``."""
    given = os.environ.get(LOCK_DIR_ENV)
    if given:
        return Path(given)
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"tokcal-locks-{user}"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:120]


# ------------------------------------------------------------------------ the registry

# Backend name -> "module:Class". Strings, so that this module imports no backend (and
# no backend package: mlflow and wandb are imported only when a run is opened).
_REGISTRY: dict[str, str | type[Tracker]] = {
    "local": "tokcal.trackers.local:LocalTracker",
    "mlflow": "tokcal.trackers.mlflow:MlflowTracker",
    "wandb": "tokcal.trackers.wandb:WandbTracker",
    "tensorboard": "tokcal.trackers.tensorboard:TensorBoardTracker",
}
DEFAULT_BACKEND = "local"  # when nothing is configured and report_to names no backend


def backend_names() -> tuple[str, ...]:
    """The registered backends' names, in registration order."""
    return tuple(_REGISTRY)


def check_backend(backend: Any) -> str:
    """Normalise and validate a backend name (``"MLflow"`` -> ``"mlflow"``).

    Example:
        >>> check_backend("MLflow")
        'mlflow'
    """
    name = backend.strip().lower() if isinstance(backend, str) else backend
    if name not in _REGISTRY:
        raise TokcalError(f"expected backend to be one of {', '.join(map(repr, _REGISTRY))}, got {backend!r}")
    return name


def backend_class(backend: str) -> type[Tracker]:
    """The :class:`Tracker` subclass of a backend name (its module is imported on first use).

    Example:
        >>> backend_class("local").__name__
        'LocalTracker'
    """
    name = check_backend(backend)
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = entry
    return entry  # type: ignore[return-value]


def register_backend(cls: type[Tracker] | str, name: str | None = None) -> None:
    """Add a backend: a :class:`Tracker` subclass, or ``"module:Class"`` with ``name``.

    A backend in this package gets its line in ``_REGISTRY`` instead; this is for
    backends defined elsewhere (a plugin, a test).

    Example:
        >>> register_backend("my_package.tensorboard:TensorBoardTracker", "tensorboard")  # doctest: +SKIP
    """
    if isinstance(cls, str):
        if not name or ":" not in cls:
            raise TokcalError(f"expected a Tracker class, or 'module:Class' with a name, got {cls!r}")
        key = name
    elif isinstance(cls, type) and issubclass(cls, Tracker):
        key = name or cls.name
    else:
        raise TokcalError(f"expected a Tracker class, or 'module:Class' with a name, got {cls!r}")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", key) or key in _REGISTRY:
        raise TokcalError(f"expected a new lower-case backend name, got {key!r} (registered: {list(_REGISTRY)})")
    _REGISTRY[key] = cls


def unregister_backend(name: str) -> None:
    """Remove a backend that :func:`register_backend` added."""
    _REGISTRY.pop(check_backend(name))


def option_owner(option: str) -> str | None:
    """The backend that takes ``option`` (``tracking_uri`` -> ``mlflow``); ``None`` if none does."""
    for name in _REGISTRY:
        if option in backend_class(name).options:
            return name
    return None
