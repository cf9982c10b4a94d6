"""The per-sample record of one evaluation, and its file format (reader and writer).

Every evaluation keeps, beside its averages, one compact row per decision: the sample's
position in the eval set (``index``: the dataset index in the Trainer, the record's line
in a data file, so the live callback and ``tokcal backfill`` give one sample one index),
its ``turn`` (0 unless a sample holds several decisions), the record's own ``id`` when the
data has one, the true label and the probability of each label. Prompt text is kept only
when asked for (``sample_text``). Trajectories, flips and the report's per-sample views
are computed from these records, whichever backend stored them.

The file is one JSON object, columns as arrays, probabilities with 6 significant digits::

    {"format": "tokcal-per-sample", "version": 1, "labels": ["Accept", "Reject"],
     "n": 3, "gt": [0, 1, 1], "p": [[0.91, 0.62, 0.05], [0.07, 0.33, 0.94]]}

``index`` is left out when it is ``0 .. n-1`` and ``turn`` when it is all 0; ``id`` and
``text`` appear only when there are any. ``p[k]`` is label ``k``'s column.

Example:
    >>> import numpy as np
    >>> rec = PerSample(["Accept", "Reject"], index=np.array([0, 1]), gt=np.array([0, 1]),
    ...                 probs=np.array([[0.9, 0.05], [0.3, 0.6]]))
    >>> back = PerSample.from_json(rec.to_json())
    >>> back.correct.tolist(), back.probs[1].tolist()
    ([True, True], [0.3, 0.6])
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from tokcal.core.trajectories import TURN_BITS, decision_keys
from tokcal.errors import TokcalError

FORMAT = "tokcal-per-sample"
VERSION = 1
SUFFIX = "per_sample.json"  # file names: step_000120_eval_per_sample.json


def file_name(step: int, prefix: str) -> str:
    """``step_000120_eval_per_sample.json``: zero-padded, so files sort by step."""
    return f"step_{step:06d}_{prefix}{SUFFIX}"


@dataclass
class PerSample:
    """The decisions of one evaluation, one row each.

    Attributes:
        labels: the spec's labels (positive first).
        index: (N,) position of each decision's sample in the eval set.
        gt: (N,) true label index.
        probs: (N, K) probability of each label (not normalised: the row sum is the mass).
        turn: (N,) the decision's number within its sample (default all 0).
        ids: the record id of each decision's sample, when the data has ids.
        text: the text before each decision, when it was asked for.
    """

    labels: list[str]
    index: np.ndarray
    gt: np.ndarray
    probs: np.ndarray
    turn: np.ndarray = field(default=None)  # type: ignore[assignment]
    ids: list[Any] | None = None
    text: list[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = [str(x) for x in self.labels]
        self.index = np.asarray(self.index, dtype=np.int64).reshape(-1)
        n, k = len(self.index), len(self.labels)
        self.gt = np.asarray(self.gt, dtype=np.int64).reshape(-1)
        self.probs = np.asarray(self.probs, dtype=np.float64).reshape(n, k) if n else np.zeros((0, k))
        self.turn = np.zeros(n, np.int64) if self.turn is None else np.asarray(self.turn, dtype=np.int64).reshape(-1)
        if k < 2 or self.gt.shape != (n,) or self.turn.shape != (n,):
            raise TokcalError(f"expected at least 2 labels and index, gt, turn of one length, got {k} labels and "
                              f"lengths {n}, {len(self.gt)}, {len(self.turn)}")
        if n and (self.gt.min() < 0 or self.gt.max() >= k or self.index.min() < 0 or self.turn.min() < 0):
            raise TokcalError(f"expected gt in [0, {k}) and index, turn >= 0, got gt {self.gt.min()}..{self.gt.max()}")
        for name in ("ids", "text"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise TokcalError(f"expected {name} to hold {n} entries (one per decision), got {len(value)}")

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def from_scores(cls, scores: Any, text: Sequence[str] | None = None) -> "PerSample":
        """From :class:`~tokcal.core.scores.DecisionScores` (its ``sample_ids`` become ``ids``
        when they are not just the indices)."""
        index = np.asarray(scores.sample_index, dtype=np.int64)
        turn = decision_keys(index) & ((1 << TURN_BITS) - 1)
        ids = None
        if scores.sample_ids is not None and len(index):
            given = [scores.sample_ids[i] for i in index]
            if any(not isinstance(g, (int, np.integer)) or int(g) != int(i) for g, i in zip(given, index)):
                ids = [g.item() if isinstance(g, np.generic) else g for g in given]
        return cls(list(scores.labels), index, scores.gt, scores.probs, turn, ids,
                   None if text is None else list(text))

    # -- derived columns ---------------------------------------------------------------
    @property
    def keys(self) -> np.ndarray:
        """(N,) one join key per decision, ``index << TURN_BITS | turn`` (see
        :func:`~tokcal.core.trajectories.decision_keys`): equal for the same decision of
        the same sample in any evaluation."""
        return (self.index << TURN_BITS) | self.turn

    @property
    def pred(self) -> np.ndarray:
        """(N,) argmax label (ties to the first label, as in ``compute_metrics``)."""
        return self.probs.argmax(axis=1) if len(self) else np.zeros(0, np.int64)

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.gt

    @property
    def mass(self) -> np.ndarray:
        """(N,) probability of any label: the decision mass."""
        return self.probs.sum(axis=1)

    @property
    def q(self) -> np.ndarray:
        """(N, K) label probabilities renormalised over the labels (uniform where the mass is 0)."""
        mass = self.mass[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            q = self.probs / mass
        return np.where(mass > 0, q, 1.0 / len(self.labels))

    @property
    def q_true(self) -> np.ndarray:
        """(N,) renormalised probability of the true label."""
        return self.q[np.arange(len(self)), self.gt]

    @property
    def confidence(self) -> np.ndarray:
        """(N,) renormalised probability of the predicted label."""
        return self.q.max(axis=1) if len(self) else np.zeros(0)

    def sample_name(self, i: int) -> str:
        """How the report names decision ``i``: its record id, else ``#index`` (and the turn)."""
        name = str(self.ids[i]) if self.ids is not None else f"#{int(self.index[i])}"
        return name + (f" (turn {int(self.turn[i])})" if self.turn[i] else "")

    # -- the file format ---------------------------------------------------------------
    def to_json(self) -> bytes:
        """The record as the JSON document the module docstring describes."""
        n = len(self)
        parts = [f'"format":"{FORMAT}"', f'"version":{VERSION}', f'"labels":{json.dumps(self.labels)}', f'"n":{n}']
        if not np.array_equal(self.index, np.arange(n)):
            parts.append(f'"index":{_ints(self.index)}')
        if self.turn.any():
            parts.append(f'"turn":{_ints(self.turn)}')
        if self.ids is not None:
            parts.append(f'"id":{json.dumps(self.ids, default=str)}')
        parts.append(f'"gt":{_ints(self.gt)}')
        parts.append('"p":[' + ",".join(_floats(self.probs[:, k]) for k in range(len(self.labels))) + "]")
        if self.text is not None:
            parts.append(f'"text":{json.dumps(self.text, ensure_ascii=False)}')
        return ("{" + ",".join(parts) + "}\n").encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str, where: str = "per-sample record") -> "PerSample":
        """Read what :meth:`to_json` wrote; a one-line :class:`TokcalError` naming ``where`` otherwise."""
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise TokcalError(f"{where}: expected a JSON per-sample record, got unreadable text ({exc})") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise TokcalError(f"{where}: expected a {FORMAT!r} document, got {str(doc)[:60]!r}")
        if doc.get("version") != VERSION:
            raise TokcalError(f"{where}: expected {FORMAT} version {VERSION}, got {doc.get('version')!r}; "
                              "upgrade tokcal to read it")
        try:
            n = int(doc["n"])
            probs = np.array(doc["p"], dtype=np.float64).reshape(len(doc["labels"]), n).T
            return cls(doc["labels"], doc.get("index", np.arange(n)), doc["gt"], probs, doc.get("turn"),
                       doc.get("id"), doc.get("text"))
        except (KeyError, TypeError, ValueError) as exc:
            raise TokcalError(f"{where}: expected labels, n, gt and p in the per-sample record, got a broken one "
                              f"({type(exc).__name__}: {exc})") from exc


def _ints(a: np.ndarray) -> str:
    return "[" + ",".join(map(str, a.tolist())) + "]"


def _floats(a: np.ndarray) -> str:
    """6 significant digits; NaN/inf (not JSON) as null."""
    return "[" + ",".join(f"{x:.6g}" if math.isfinite(x) else "null" for x in a.tolist()) + "]"


__all__ = ["FORMAT", "PerSample", "SUFFIX", "VERSION", "file_name"]
