"""``tokcal compare``: two evaluations of the same samples, side by side, with paired tests.

The two evaluations come from any source ``tokcal report`` reads (a local store run, an
MLflow run, a W&B run, a training output folder): two runs at their last evaluation or at
one chosen step, or one run at two steps. Each must hold per-sample records (the default
since tokcal keeps them). The numbers come from :func:`tokcal.core.compare.compare_records`;
this module picks the evaluations and lays out the table.

Example:
    >>> result = compare_sources("out-a/tokcal", "out-b/tokcal")  # doctest: +SKIP
    >>> print(format_comparison(result))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tokcal.core.bootstrap import HEADLINE, LEVEL, N_RESAMPLES, SEED
from tokcal.core.compare import Comparison, compare_records
from tokcal.errors import TokcalError
from tokcal.trackers.base import Point, Series

#: How the table names each metric.
NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "ece": "ECE", "smece": "smooth ECE",
         "brier": "Brier", "nll": "NLL", "auroc": "AUROC", "mass": "mass"}


@dataclass
class ComparedPair:
    """The comparison and what was compared: each side's series name and step."""

    a_name: str
    a_step: int
    b_name: str
    b_step: int
    comparison: Comparison


def pick_point(series: Series, step: int | None, side: str) -> Point:
    """The series' evaluation at ``step`` (its last at or before it), or its last; it must hold a
    per-sample record."""
    points = series.points if step is None else [p for p in series.points if p.step <= step]
    if not points:
        raise TokcalError(f"{side} ({series.name}) has no evaluation at or before step {step}; "
                          f"its steps are {series.steps[0]}..{series.steps[-1]}")
    p = points[-1]
    if p.per_sample is None:
        raise TokcalError(f"{side} ({series.name}) step {p.step} holds no per-sample record; expected a run logged "
                          "with per-sample records (the default) or `tokcal backfill` output")
    return p


def one_series(found: list[Series], source: str, side: str) -> Series:
    if len(found) != 1:
        names = ", ".join(s.name for s in found)
        raise TokcalError(f"{side}: expected one run in {source!r}, got {len(found)} ({names}); name one run's folder "
                          "or id")
    return found[0]


def compare_series(a: Series, b: Series, *, step_a: int | None = None, step_b: int | None = None,
                   n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = SEED,
                   metrics: Sequence[str] | None = None) -> ComparedPair:
    """Compare series ``b`` at ``step_b`` with series ``a`` at ``step_a`` (default: each one's last)."""
    pa, pb = pick_point(a, step_a, "A"), pick_point(b, step_b, "B")
    c = compare_records(pa.per_sample, pb.per_sample, n_resamples=n_resamples, level=level, seed=seed,
                        metrics=metrics)
    return ComparedPair(a.name, pa.step, b.name, pb.step, c)


def compare_sources(a: str, b: str | None = None, *, steps: Sequence[int] = (), tracking_uri: str | None = None,
                    n_resamples: int = N_RESAMPLES, level: float = LEVEL, seed: int = SEED,
                    metrics: Sequence[str] | None = None) -> ComparedPair:
    """Read the sources as ``tokcal report`` does and compare them.

    Args:
        a, b: the two sources; ``b`` omitted: two steps of ``a``.
        steps: none (each run's last evaluation), one (both at the last evaluation at or before
            it) or two (A's, then B's).
    """
    from tokcal.jobs.report import read_source

    if len(steps) > 2 or any(s < 0 for s in steps):
        raise TokcalError(f"expected --step to give one or two steps >= 0, got {list(steps)}")
    if b is None and len(steps) != 2:
        raise TokcalError("expected a second source, or two steps (--step A_STEP B_STEP) to compare one run with "
                          "itself")
    step_a, step_b = (steps[0], steps[-1]) if steps else (None, None)
    sa = one_series(read_source(a, tracking_uri=tracking_uri), a, "A")
    sb = sa if b is None or b == a else one_series(read_source(b, tracking_uri=tracking_uri), b, "B")
    return compare_series(sa, sb, step_a=step_a, step_b=step_b, n_resamples=n_resamples, level=level, seed=seed,
                          metrics=metrics)


def _num(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.4f}"


def _signed(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:+.4f}"


def format_comparison(pair: ComparedPair) -> str:
    """The comparison as a plain-text table, the accuracy test and the notes."""
    c = pair.comparison
    pct = f"{100 * c.level:g}%"
    head = ["metric", "A", "B", "B - A", f"{pct} interval of B - A", "verdict"]
    body = []
    for r in c.rows:
        hint = "higher is better" if r.better > 0 else "lower is better"
        body.append([f"{NAMES.get(r.metric, r.metric)} ({hint})", _num(r.a), _num(r.b), _signed(r.diff),
                     f"{_signed(r.low)} to {_signed(r.high)}",
                     r.verdict + (" (exact test)" if r.metric == "accuracy" else "")])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    line = lambda row: "  ".join(x.ljust(w) if i in (0, 5) else x.rjust(w)
                                 for i, (x, w) in enumerate(zip(row, widths))).rstrip()
    m = c.mcnemar
    summary = (f"{c.shared} shared samples; {c.n_resamples} paired resamples (seed {c.seed}); verdicts at {pct} "
               "confidence")
    counts = (f"accuracy, decision by decision: right in both {m.both_right}, only in A {m.a_only}, only in B "
              f"{m.b_only}, in neither {m.both_wrong}; exact test p = {m.p_value:.3g}"
              + (" (the accuracy verdict)" if any(r.metric == "accuracy" for r in c.rows) else ""))
    out = [f"A: {pair.a_name} @ step {pair.a_step}", f"B: {pair.b_name} @ step {pair.b_step}", summary, "",
           line(head), line(["-" * w for w in widths])]
    out += [line(row) for row in body]
    out += ["", counts]
    out += [f"note: {n}" for n in c.notes]
    return "\n".join(out)


__all__ = [
    "HEADLINE",
    "NAMES",
    "ComparedPair",
    "compare_series",
    "compare_sources",
    "format_comparison",
    "one_series",
    "pick_point",
]
