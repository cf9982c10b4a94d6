"""Per-sample trajectories over evaluations: learned when, forgotten how often, flips.

A sample is *learned* once it is decided correctly and stays so; a *forgetting event* is a
correct-to-wrong flip between two of its evaluations (Toneva et al. 2019, "An Empirical
Study of Example Forgetting during Deep Neural Network Learning"). Samples join by id, so
an evaluation may lack some samples or add new ones.

Definitions, over the evaluations where a sample is present (the others are skipped, so
"previous" means the sample's own previous evaluation):

* ``flips_to_wrong`` at evaluation t: samples correct at their previous evaluation and
  wrong at t (forgetting events); ``flips_to_right``: wrong before, correct at t. Both are
  0 at the first evaluation, where nothing came before.
* ``forgotten`` at t: samples wrong at t that were correct at some earlier evaluation.
* per sample: ``forgetting`` = its number of correct-to-wrong flips;
  ``first_learned`` = the step where its final run of correct evaluations starts
  (correct from then on), NaN when it is wrong at its last evaluation;
  ``never_learned`` = never correct at any evaluation.

So the flips to wrong summed over evaluations equal the forgetting counts summed over
samples.

Example:
    >>> t = trajectories([[0, 1, 2], [0, 1, 2], [0, 1, 2]],
    ...                  [[1, 0, 0], [0, 1, 0], [1, 1, 0]], steps=[10, 20, 30])
    >>> t.flips_to_wrong.tolist(), t.flips_to_right.tolist(), t.forgotten.tolist()
    ([0, 1, 0], [0, 1, 1], [0, 1, 0])
    >>> t.samples.first_learned.tolist(), t.samples.forgetting.tolist(), t.samples.never_learned.tolist()
    ([30.0, 20.0, nan], [1, 0, 0], [False, False, True])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from tokcal.errors import TokcalError

#: ``decision_keys`` packs (sample index, turn) as ``index << TURN_BITS | turn``.
TURN_BITS = 20


@dataclass(frozen=True)
class StepFlips:
    """What changed at one evaluation.

    Attributes:
        step: the evaluation's step.
        flips_to_wrong, flips_to_right, forgotten: see the module docstring.
        compared: samples that had an earlier evaluation (the base of the flips).
        present: samples in this evaluation.
    """

    step: float
    flips_to_wrong: int
    flips_to_right: int
    forgotten: int
    compared: int
    present: int


@dataclass
class SampleTrajectories:
    """Per sample (sorted by id): evaluations seen, times correct, forgetting events,
    the step it was learned (NaN: not learned by its last evaluation), ever correct."""

    ids: np.ndarray
    seen: np.ndarray
    n_correct: np.ndarray
    forgetting: np.ndarray
    first_learned: np.ndarray
    ever_correct: np.ndarray

    @property
    def never_learned(self) -> np.ndarray:
        """Never correct at any evaluation."""
        return ~self.ever_correct


@dataclass
class Trajectories:
    """Per-evaluation flips (arrays over ``steps``) and the per-sample summary."""

    steps: np.ndarray
    flips_to_wrong: np.ndarray
    flips_to_right: np.ndarray
    forgotten: np.ndarray
    compared: np.ndarray
    samples: SampleTrajectories


def _ids_and_flags(ids: Any, correct: Any) -> tuple[np.ndarray, np.ndarray]:
    i = np.asarray(ids)
    c = np.asarray(correct)
    if i.ndim != 1 or c.shape != i.shape:
        raise TokcalError(f"expected ids and correct of one shape (N,), got {i.shape} and {c.shape}")
    if c.size and c.dtype != bool and not (np.issubdtype(c.dtype, np.number) and np.isin(c, (0, 1)).all()):
        raise TokcalError(f"expected correct as booleans or 0/1, got dtype {c.dtype}")
    return i, c.astype(bool)


class TrajectoryState:
    """The per-sample state that :func:`trajectories` folds over evaluations, one
    :meth:`update` per evaluation (what the Trainer callback keeps in memory).

    Memory is a few numbers per sample, whatever the number of evaluations.

    Example:
        >>> st = TrajectoryState()
        >>> st.update([0, 1], [True, False], step=5).flips_to_right
        0
        >>> st.update([0, 1], [False, True], step=10)
        StepFlips(step=10.0, flips_to_wrong=1, flips_to_right=1, forgotten=1, compared=2, present=2)
    """

    def __init__(self) -> None:
        self.ids: np.ndarray | None = None
        self.last = np.zeros(0, dtype=bool)
        self.ever = np.zeros(0, dtype=bool)
        self.seen = np.zeros(0, dtype=np.int64)
        self.n_correct = np.zeros(0, dtype=np.int64)
        self.forgetting = np.zeros(0, dtype=np.int64)
        self.learned_at = np.zeros(0, dtype=np.float64)
        self.evaluations = 0
        self.last_step: float | None = None

    def _grow(self, new_ids: np.ndarray) -> None:
        """Add ids not seen yet (kept sorted), with empty state."""
        if self.ids is None:
            self.ids = new_ids[:0]
        if self.ids.size and new_ids.size and (self.ids.dtype.kind in "US") != (new_ids.dtype.kind in "US"):
            raise TokcalError(f"expected ids of one kind across evaluations, got {self.ids.dtype} then {new_ids.dtype}")
        union = np.union1d(self.ids, new_ids)
        if len(union) == len(self.ids):
            return
        at = np.searchsorted(union, self.ids)
        n = len(union)

        def moved(old: np.ndarray, fill: Any) -> np.ndarray:
            out = np.full(n, fill, dtype=old.dtype)
            out[at] = old
            return out

        self.last, self.ever = moved(self.last, False), moved(self.ever, False)
        self.seen, self.n_correct = moved(self.seen, 0), moved(self.n_correct, 0)
        self.forgetting, self.learned_at = moved(self.forgetting, 0), moved(self.learned_at, math.nan)
        self.ids = union

    def update(self, ids: Any, correct: Any, step: float | None = None) -> StepFlips:
        """Fold in one evaluation: ``ids`` (unique) and whether each was decided correctly.

        ``step`` defaults to the number of evaluations so far; steps must not decrease.
        """
        i, ok = _ids_and_flags(ids, correct)
        s = float(self.evaluations if step is None else step)
        if not math.isfinite(s) or (self.last_step is not None and s < self.last_step):
            raise TokcalError(f"expected a step >= {self.last_step}, got {step!r}")
        order = np.argsort(i, kind="stable")
        i, ok = i[order], ok[order]
        if len(i) > 1 and np.any(i[1:] == i[:-1]):
            dup = i[1:][i[1:] == i[:-1]][0].item()
            raise TokcalError(f"expected unique sample ids in one evaluation, got {dup!r} twice")
        self._grow(i)
        assert self.ids is not None  # set by _grow
        at = np.searchsorted(self.ids, i)
        before = self.seen[at] > 0
        prev = self.last[at]
        to_wrong = before & prev & ~ok
        to_right = before & ~prev & ok
        forgotten = ~ok & self.ever[at]
        still = before & prev & ok
        self.learned_at[at] = np.where(ok, np.where(still, self.learned_at[at], s), math.nan)
        self.forgetting[at] += to_wrong
        self.last[at] = ok
        self.ever[at] |= ok
        self.seen[at] += 1
        self.n_correct[at] += ok
        self.evaluations += 1
        self.last_step = s
        return StepFlips(s, int(to_wrong.sum()), int(to_right.sum()), int(forgotten.sum()),
                         int(before.sum()), len(i))

    def samples(self) -> SampleTrajectories:
        """The per-sample summary so far (copies)."""
        ids = self.ids if self.ids is not None else np.zeros(0, dtype=np.int64)
        return SampleTrajectories(ids.copy(), self.seen.copy(), self.n_correct.copy(), self.forgetting.copy(),
                                  self.learned_at.copy(), self.ever.copy())


def flip_scalars(flips: StepFlips, prefix: str) -> dict[str, float]:
    """The scalars an evaluation logs for its flips: ``<prefix>decision_flips_to_wrong``,
    ``_flips_to_right`` and ``_forgotten``.

    Example:
        >>> flip_scalars(StepFlips(20.0, 3, 1, 4, 10, 10), "eval_")["eval_decision_flips_to_wrong"]
        3.0
    """
    return {f"{prefix}decision_flips_to_wrong": float(flips.flips_to_wrong),
            f"{prefix}decision_flips_to_right": float(flips.flips_to_right),
            f"{prefix}decision_forgotten": float(flips.forgotten)}


def trajectories(ids: Sequence[Any], correct: Sequence[Any], steps: Sequence[float] | None = None) -> Trajectories:
    """Flips per evaluation and the per-sample summary, from one ``(ids, correct)`` pair
    per evaluation (in step order).

    Args:
        ids: per evaluation, the (unique) sample ids it holds: ints or strings.
        correct: per evaluation, whether each of those samples was decided correctly.
        steps: per evaluation, its step (non-decreasing); default 0, 1, 2, ...
    """
    if len(ids) != len(correct) or (steps is not None and len(steps) != len(ids)):
        raise TokcalError(f"expected as many correct (and steps) as ids, got {len(ids)} ids, {len(correct)} correct"
                          + ("" if steps is None else f", {len(steps)} steps"))
    st = TrajectoryState()
    rows = [st.update(i, c, None if steps is None else steps[t]) for t, (i, c) in enumerate(zip(ids, correct))]

    def col(name: str) -> np.ndarray:
        return np.array([getattr(r, name) for r in rows], dtype=np.int64)

    return Trajectories(np.array([r.step for r in rows], dtype=np.float64), col("flips_to_wrong"),
                        col("flips_to_right"), col("forgotten"), col("compared"), st.samples())


def correct_from_probs(probs: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N,) pred == gt with pred = argmax of the label probabilities (ties to the first
    label, as in ``compute_metrics``)."""
    p = np.asarray(probs)
    g = np.asarray(gt)
    if p.ndim != 2 or g.shape != (p.shape[0],):
        raise TokcalError(f"expected probs (N, K) and gt (N,), got {p.shape} and {g.shape}")
    return p.argmax(axis=1) == g


def decision_keys(sample_index: np.ndarray) -> np.ndarray:
    """One id per decision: ``sample_index << TURN_BITS | turn``, where ``turn`` counts the
    sample's decisions in order (0 for single-answer samples), so multi-turn samples get
    one key per answer.

    Example:
        >>> (decision_keys(np.array([3, 3, 5])) >> TURN_BITS).tolist(), (decision_keys(np.array([3, 3, 5])) & 1).tolist()
        ([3, 3, 5], [0, 1, 0])
    """
    si = np.asarray(sample_index, dtype=np.int64)
    if si.ndim != 1:
        raise TokcalError(f"expected sample_index of shape (N,), got {si.shape}")
    order = np.argsort(si, kind="stable")
    s = si[order]
    start = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, dtype=np.int64)
    size = np.diff(np.r_[start, len(s)])
    turn_sorted = np.arange(len(s)) - np.repeat(start, size)
    turn = np.empty(len(s), dtype=np.int64)
    turn[order] = turn_sorted
    return (si << TURN_BITS) | turn
