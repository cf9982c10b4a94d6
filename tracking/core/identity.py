"""The identity of an eval set: which decisions it holds, so two evaluations can tell whether
they scored the same samples.

The fingerprint hashes, for every decision, its key (the sample's position in the eval set and
its turn) and the name of its true label, in key order. The Trainer's callback and
``tokcal backfill`` both know these (the dataset index is the record's line in the data file),
so a live evaluation and a backfill of the same eval set give the same fingerprint, whatever
the batch order, and another eval set of the same size almost surely does not.

Example:
    >>> import numpy as np
    >>> a = eval_set_identity(np.array([0, 1, 2]), np.array([0, 1, 0]), ["Accept", "Reject"])
    >>> a["size"], len(a["fingerprint"])
    (3, 16)
    >>> b = eval_set_identity(np.array([2, 0, 1]), np.array([0, 0, 1]), ["Accept", "Reject"])
    >>> a == b  # the same decisions in another order
    True
    >>> eval_set_identity(np.array([0, 1, 2]), np.array([1, 1, 0]), ["Accept", "Reject"]) == a
    False
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from tokcal.core.trajectories import decision_keys
from tokcal.errors import TokcalError


def eval_set_identity(sample_index: np.ndarray, gt: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """``{"size": N, "fingerprint": <16 hex digits>}`` of the decisions ``(sample_index, gt)``.

    Args:
        sample_index: (N,) the sample each decision came from (several decisions of one
            sample are told apart by their order).
        gt: (N,) index of each decision's true label in ``labels``.
        labels: the spec's labels.
    """
    si = np.asarray(sample_index, dtype=np.int64)
    g = np.asarray(gt, dtype=np.int64)
    if si.ndim != 1 or g.shape != si.shape:
        raise TokcalError(f"expected sample_index and gt of one shape (N,), got {si.shape} and {g.shape}")
    if len(g) and (g.min() < 0 or g.max() >= len(labels)):
        raise TokcalError(f"expected gt in [0, {len(labels)}), got values from {g.min()} to {g.max()}")
    keys = decision_keys(si)
    order = np.argsort(keys, kind="stable")
    h = hashlib.sha256()
    for key, label in zip(keys[order].tolist(), g[order].tolist()):
        h.update(f"{key}:{labels[label]}\n".encode("utf-8"))
    return {"size": int(len(g)), "fingerprint": h.hexdigest()[:16]}


def same_eval_set(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    """Whether two identities name the same eval set; ``None`` when either is unknown."""
    if not a or not b or "fingerprint" not in a or "fingerprint" not in b:
        return None
    return a["fingerprint"] == b["fingerprint"] and a.get("size") == b.get("size")
