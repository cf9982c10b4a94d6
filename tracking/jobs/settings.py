"""Tracking settings shared by the callback, backfill and the CLI (code or YAML)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tokcal.core.spec import DecisionSpec
from tokcal.errors import TokcalError
from tokcal.trackers.base import (
    DEFAULT_BACKEND,
    backend_class,
    backend_names,
    check_scalar_selection,
    scalar_names,
)

SCORERS = ("auto", "hook", "pass")


@dataclass(frozen=True)
class TrackingSettings:
    """What to compute and where to log it.

    Attributes:
        spec: labels, prefix, variants.
        backend: ``"auto"`` (follow the Trainer's ``report_to``), one of ``local``,
            ``mlflow``, ``wandb``, ``tensorboard``, or a list of them.
        every: log every N-th evaluation of each eval set (metric prefix).
        n_bins: reliability bins; hist_bins: histogram bins.
        log_per_sample: keep the per-sample record of every evaluation (sample index,
            record id, gt, the probability of each label; no text) in every backend, for
            trajectories, flips and the report's per-sample views; on by default, a few KB
            per evaluation (about 200 KB for 10,000 binary decisions).
        log_samples: also log a readable per-sample table (ids, probabilities, gt, pred);
            off by default. max_samples caps it.
        sample_text: add the text before each decision (the last 256 tokens) to that table
            and to the per-sample record; off by default since eval data can be confidential.
        metrics: which scalars become charts in MLflow and W&B: ``"default"`` (the
            headline set, :data:`~tokcal.trackers.base.HEADLINE_METRICS`: the mean
            probability of each label, decision mass, confidence, accuracy, ECE, Brier, NLL,
            AUROC, balanced accuracy, MCC, AURC, mass p05, samples, missing and the flips),
            ``"all"``, or a list of names without the prefix (``["decision_ece",
            "avg_p_accept"]``). Every scalar still goes into the Trainer's metrics dict and
            ``log_history``, and into each evaluation's stored record (the local store,
            MLflow's ``bins_step_*.json`` artifact, a W&B run file), where ``tokcal report``
            reads it.
        scorer: ``auto`` (read the Trainer's eval logits, fall back to an own pass when
            the model returns none), ``hook`` or ``pass`` (always an own pass).
        background_logging: draw the figures and write to local/MLflow in a background
            thread (on the logging process), so training does not wait for them; W&B is
            always logged in the calling thread. ``flush()`` on the callback waits for it.
        project, entity: W&B; tracking_uri, experiment: MLflow; run_id: attach to that run;
            local_dir: the local store (default ``<output_dir>/tokcal``).
        verbose: the training callback prints one line at train begin (each backend, its
            run id and how to open it) and one per evaluation (mass, accuracy, ECE); on by
            default, ``False`` for none.

    Example:
        >>> TrackingSettings(backend="mlflow", every=2).every
        2
    """

    spec: DecisionSpec = field(default_factory=DecisionSpec)
    backend: str | tuple[str, ...] = "auto"
    every: int = 1
    n_bins: int = 15
    hist_bins: int = 20
    log_per_sample: bool = True
    log_samples: bool = False
    sample_text: bool = False
    max_samples: int | None = None
    metrics: str | tuple[str, ...] = "default"
    scorer: str = "auto"
    background_logging: bool = True
    project: str | None = None
    entity: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    run_id: str | None = None
    local_dir: str | None = None
    verbose: bool = True

    def __post_init__(self) -> None:
        b = self.backend
        names = (b,) if isinstance(b, str) else tuple(b)
        known = backend_names()
        bad = [x for x in names if x not in known + ("auto",)]
        if bad or not names or ("auto" in names and len(names) > 1):
            raise TokcalError(f"expected backend 'auto' or some of {list(known)}, got {b!r}")
        object.__setattr__(self, "backend", names[0] if len(names) == 1 else names)
        for name in ("every", "n_bins", "hist_bins"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise TokcalError(f"expected {name} >= 1, got {v!r}")
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or self.max_samples < 1):
            raise TokcalError(f"expected max_samples >= 1 or None, got {self.max_samples!r}")
        if self.scorer not in SCORERS:
            raise TokcalError(f"expected scorer in {list(SCORERS)}, got {self.scorer!r}")
        if not isinstance(self.verbose, bool):
            raise TokcalError(f"expected verbose to be true or false, got {self.verbose!r}")
        if not isinstance(self.spec, DecisionSpec):
            raise TokcalError(f"expected spec to be a DecisionSpec, got {type(self.spec).__name__}")
        selection = check_scalar_selection(self.metrics)
        if isinstance(selection, tuple):
            known = scalar_names(self.spec.labels)
            unknown = [x for x in selection if x not in known]
            if unknown:
                close = {x: difflib.get_close_matches(x, known, n=1) for x in unknown}
                hint = "; ".join(f"{x!r}: did you mean {c[0]!r}?" for x, c in close.items() if c)
                raise TokcalError(f"expected metric names that an evaluation logs, got unknown {unknown}"
                                  + (f" ({hint})" if hint else "") + "; 'all' logs every one")
        object.__setattr__(self, "metrics", selection)

    def replace(self, **changes: Any) -> "TrackingSettings":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TokcalError(f"unknown tracking options {sorted(unknown)}; expected some of {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def backends_for(self, report_to: str | Sequence[str] | None) -> list[str]:
        """The backends to open: named ones, or those whose Trainer integration
        ``report_to`` names (``"all"``: every one), in registry order; else ``local``.

        Example:
            >>> TrackingSettings().backends_for(["wandb", "tensorboard"]), TrackingSettings().backends_for("none")
            (['wandb', 'tensorboard'], ['local'])
        """
        if self.backend != "auto":
            return [self.backend] if isinstance(self.backend, str) else list(self.backend)
        rt = [report_to] if isinstance(report_to, str) else list(report_to or [])
        follows = {name: backend_class(name).report_to for name in backend_names()}
        chosen = [name for name, integration in follows.items() if integration and ("all" in rt or integration in rt)]
        return chosen or [DEFAULT_BACKEND]

    def tracker_kwargs(self, backend: str, *, local_dir: str, run_name: str | None = None) -> dict[str, Any]:
        """:func:`~tokcal.trackers.open_tracker` arguments for ``backend``: the common ones
        and the backend's options that these settings hold (``project``, ``tracking_uri`` ...).

        Example:
            >>> TrackingSettings(project="p").tracker_kwargs("wandb", local_dir="out/tokcal")["project"]
            'p'
        """
        fields = {f.name for f in dataclasses.fields(self)}
        kw: dict[str, Any] = {"local_dir": self.local_dir or local_dir, "run_id": self.run_id, "run_name": run_name}
        kw.update({o: getattr(self, o) for o in backend_class(backend).options if o in fields})
        return kw

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["spec"] = self.spec.to_dict()
        for name in ("backend", "metrics"):
            if isinstance(d[name], tuple):
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrackingSettings":
        """From ``{"spec": {...}, "tracking": {...}}`` or a flat mapping (a ``vllm:`` section,
        the scoring commands' vLLM options, is not a tracking setting)."""
        flat = dict(data.get("tracking", {}))
        flat.update({k: v for k, v in data.items() if k not in ("tracking", "spec", "vllm")})
        spec = data.get("spec")
        if spec is not None:
            flat["spec"] = spec if isinstance(spec, DecisionSpec) else DecisionSpec.from_dict(spec)
        for name in ("backend", "metrics"):
            if isinstance(flat.get(name), list):
                flat[name] = tuple(flat[name])
        try:
            return cls(**flat)
        except TypeError as exc:
            known = sorted(f.name for f in dataclasses.fields(cls))
            raise TokcalError(f"unknown tracking options in {sorted(flat)}; expected some of {known}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrackingSettings":
        from tokcal.config import load_yaml

        return cls.from_dict(load_yaml(path))
