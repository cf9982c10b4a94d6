"""Backfill: rescore saved ``checkpoint-N`` folders and log each into the run at step N.

The eval data is read and checked once, tokenised once (again only for a checkpoint whose
tokenizer differs), and every checkpoint is scored with the same core as ``tokcal
extract``. Steps the run already has for these metrics are skipped, so running it again
adds nothing and an interrupted backfill goes on where it stopped. A bad checkpoint is
reported and the others still run.

Under ``torchrun`` (a ``torch.distributed`` process group), every rank scores a shard of
the batches; rank 0 gathers the probabilities, writes the files and logs. The batches are
the same as in one process, so the numbers are too.

Example:
    >>> from tracking.trackers import open_tracker  # doctest: +SKIP
    >>> tracker = open_tracker("mlflow", run_id="4f0c...", tracking_uri="http://127.0.0.1:5000", spool=False)  # doctest: +SKIP
    >>> report = backfill(["out"], "eval.jsonl", tracker, TrackingSettings())  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from tracking.core.distributed import Dist
from tracking.errors import TokcalError, first_line
from tracking.jobs.checkpoints import (
    inspect_checkpoint,
    resolve_checkpoints,
)
from tracking.jobs.settings import TrackingSettings

log = logging.getLogger(__name__)

#: The marker every backfilled evaluation carries (W&B: ``eval/tag_tokcal_backfill`` in
#: the row; MLflow: a run tag and the ``tags`` of each ``bins_step_*.json``; local: the
#: line's ``tags``).
MARKER: dict[str, str] = {"tokcal_backfill": "true"}
DECISIONS_FILE = "tokcal_decisions.jsonl"


# ----------------------------------------------------------------------------- results


@dataclass
class CheckpointResult:
    """What happened to one checkpoint."""

    path: Path
    step: int
    status: str  # "logged" | "skipped" | "failed"
    error: str | None = None
    output: Path | None = None  # the per-decision JSONL
    scalars: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class BackfillReport:
    """All checkpoints, in step order, and the runs they went to."""

    results: list[CheckpointResult]
    targets: list[dict[str, Any]] = field(default_factory=list)
    tokenizations: int = 0  # how many times the data was tokenised

    def _with(self, status: str) -> list[CheckpointResult]:
        return [r for r in self.results if r.status == status]

    @property
    def logged(self) -> list[CheckpointResult]:
        return self._with("logged")

    @property
    def skipped(self) -> list[CheckpointResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[CheckpointResult]:
        return self._with("failed")

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        """One line per checkpoint, then the counts."""
        lines = []
        for r in self.results:
            what = {"logged": "logged", "skipped": "skipped (already in the run)", "failed": f"FAILED: {r.error}"}
            lines.append(f"step {r.step:>8}  {r.path.name:<24} {what[r.status]}")
        runs = ", ".join(f"{t.get('backend')} run {t.get('run_id')}" for t in self.targets) or "no run"
        lines.append(f"backfill into {runs}: {len(self.logged)} logged, {len(self.skipped)} skipped, "
                     f"{len(self.failed)} failed")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- scoring


def tokenizer_fingerprint(tokenizer: Any, chat_template: str | None = None) -> str:
    """A hash of everything tokenisation depends on: vocabulary, merges, normaliser,
    added tokens, chat template, end-of-sequence token."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        h.update(backend.to_str().encode("utf-8"))
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    extra = (type(tokenizer).__name__, chat_template or getattr(tokenizer, "chat_template", None),
             getattr(tokenizer, "eos_token", None), getattr(tokenizer, "pad_token_id", None))
    h.update(repr(extra).encode("utf-8"))
    return h.hexdigest()


def _score_local(model: Any, tokenizer: Any, examples: list[Any], settings: TrackingSettings, *,
                 max_tokens: int, progress: bool, desc: str, dist: Dist) -> Any:
    """All the scores in one process; under torchrun, this rank's share of the batches."""
    from tracking.jobs.extract import score_examples

    if not dist.on:
        return score_examples(model, tokenizer, examples, settings.spec, max_tokens=max_tokens,
                              progress=progress, desc=desc)
    return score_examples(model, tokenizer, examples, settings.spec, max_tokens=max_tokens,
                          progress=progress and dist.main, desc=f"{desc} (rank 0 of {dist.world})",
                          shard=(dist.rank, dist.world))


def _merge(parts: list[Any], examples: list[Any]) -> Any:
    """The ranks' shares as one result in sample order, as one process gives it."""
    from tracking.core.scores import DecisionScores

    scores = DecisionScores.concat(parts, parts[0].labels).sorted()
    scores.sample_ids = [e.sample_id for e in examples]
    return scores


def _one_line(exc: BaseException) -> str:
    return first_line(exc, with_type=not isinstance(exc, TokcalError))


def decisions_path(checkpoint: Path, output_dir: str | os.PathLike[str] | None) -> Path:
    """``<checkpoint>/tokcal_decisions.jsonl``, or ``<output_dir>/<checkpoint name>.decisions.jsonl``."""
    if output_dir is None:
        return checkpoint / DECISIONS_FILE
    return Path(output_dir) / f"{checkpoint.name}.decisions.jsonl"


def backfill(
    checkpoints: Iterable[str | os.PathLike[str]],
    data: str | os.PathLike[str],
    trackers: Any,
    settings: TrackingSettings | None = None,
    *,
    force: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    metric_prefix: str = "eval_",
    max_tokens: int = 16384,
    max_samples: int | None = None,
    chat_template: str | None = None,
    tags: Mapping[str, str] | None = None,
    progress: bool = True,
    targets: Sequence[dict[str, Any]] | None = None,
    **load_kw: Any,
) -> BackfillReport:
    """Rescore checkpoints and log each into ``trackers`` at its step, in step order.

    Args:
        checkpoints: output folders, checkpoint folders or globs (see :func:`resolve_checkpoints`).
        data: the eval file (JSON/JSONL; messages, alpaca or sharegpt records), or a
            :class:`callbacks.llamafactory_data.EvalSet` (LLaMA-Factory's tokenisation, used as is).
        trackers: a :class:`~tracking.trackers.base.Tracker` or a list of them (open them
            with ``spool=False`` so a failed call fails its checkpoint). Under torchrun only
            rank 0's are used; other ranks may pass ``[]``.
        settings: spec, ``n_bins``, ``hist_bins``, ``log_samples``/``max_samples`` (the
            per-sample table); usually :func:`settings_from_state` plus flags.
        force: log steps the run already has again.
        output_dir: where the per-decision JSONL files go (default: in each checkpoint).
        metric_prefix: the metrics' prefix, as the Trainer names them (``eval_``).
        max_tokens, max_samples, chat_template: as in ``tokcal extract``.
        tags: more tags for every backfilled evaluation (:data:`MARKER` is always there).
        **load_kw: :func:`~tracking.jobs.checkpoints.load_checkpoint` options (``tokenizer``,
            ``allow_pickle``, ``device``, ``dtype``, ``trust_remote_code``).

    Returns:
        A :class:`BackfillReport`; nothing raises for one bad checkpoint.

    Raises:
        TokcalError: before any scoring, for no checkpoints or a bad data file.
    """
    import torch

    from tracking.data.conversation import tokenize_records
    from tracking.data.records import read_records, to_messages
    from tracking.io import write_jsonl
    from tracking.jobs.checkpoints import load_checkpoint

    settings = settings or TrackingSettings()
    dist = Dist()
    if hasattr(trackers, "log_evaluation"):
        trackers = [trackers]
    trackers = list(trackers) if dist.main else []
    plan = resolve_checkpoints(checkpoints)
    prebuilt = data if hasattr(data, "examples") else None  # callbacks.llamafactory_data.EvalSet: tokenised already
    if prebuilt is None:
        records = read_records(data)
        name = Path(data).name
        for i, r in enumerate(records[:max_samples]):
            to_messages(r, f"{name}, record {i}")
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)

    results: list[CheckpointResult] = []
    todo: list[CheckpointResult] = []
    for path, step in plan:  # every problem that shows without loading, before any scoring
        res = CheckpointResult(path, step, "pending", output=decisions_path(path, output_dir))
        results.append(res)
        try:
            inspect_checkpoint(path, allow_pickle=bool(load_kw.get("allow_pickle", False)))
            if output_dir is None and not os.access(path, os.W_OK):
                raise TokcalError(f"cannot write {DECISIONS_FILE} into {path} (read-only); pass --output-dir")
        except TokcalError as exc:
            res.status, res.error = "failed", str(exc)
            continue
        todo.append(res)

    key = f"{metric_prefix}decision_samples"  # always finite, logged with every evaluation
    have = [set() if force else set(t.logged_steps(key)) for t in trackers]
    need_by_step = dist.broadcast({r.step: [i for i, h in enumerate(have) if r.step not in h] for r in todo})
    n_trackers = dist.broadcast(len(trackers))
    report = BackfillReport(results, [t.describe() for t in trackers])
    marker = {**MARKER, **dict(tags or {})}
    cache: dict[str, list[Any]] = {}

    bar = None
    if progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(results), desc="checkpoints", unit="ckpt", file=sys.stderr)
    try:
        for res in results:
            if res.status != "pending":
                if bar is not None:
                    bar.update(1)
                continue
            need = need_by_step[res.step]
            if n_trackers and not need:
                res.status = "skipped"
                if bar is not None:
                    bar.update(1)
                continue
            if bar is not None:
                bar.set_postfix_str(res.path.name)
            t0 = time.perf_counter()
            model = None
            scores, error, examples = None, None, []
            try:
                model, tokenizer = load_checkpoint(res.path, **load_kw)
                fp = "prebuilt" if prebuilt is not None else tokenizer_fingerprint(tokenizer, chat_template)
                if prebuilt is not None:  # LLaMA-Factory's ids, scored with its tokenizer as in training
                    tokenizer, cache[fp] = prebuilt.tokenizer, prebuilt.examples
                    report.tokenizations = 1
                elif fp not in cache:
                    if cache:
                        log.info("%s: its tokenizer differs from the previous checkpoints'; tokenising again",
                                 res.path.name)
                    cache[fp] = tokenize_records(records, tokenizer, chat_template=chat_template,
                                                 max_samples=max_samples, progress=progress and dist.main,
                                                 name=name)
                    report.tokenizations += 1
                examples = cache[fp]
                scores = _score_local(model, tokenizer, examples, settings, max_tokens=max_tokens,
                                      progress=progress, desc=f"step {res.step}", dist=dist)
            except Exception as exc:  # one bad checkpoint must not stop the others
                error = _one_line(exc)
            finally:
                del model
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            if dist.on:  # one collective per checkpoint, whatever happened on each rank
                gathered = dist.gather((error, scores if error is None else None))
                errors = [e for e, _ in gathered if e]
                if not errors:
                    scores = _merge([p for _, p in gathered], examples)
            else:
                errors = [error] if error else []
            if errors:
                res.status, res.error = "failed", errors[0]
            elif dist.main:
                try:
                    metrics = scores.metrics(n_bins=settings.n_bins, hist_bins=settings.hist_bins,
                                             prefix=metric_prefix)
                    rows = scores.records()
                    write_jsonl(res.output, rows)
                    samples = None
                    if settings.log_samples:
                        samples = rows[: settings.max_samples] if settings.max_samples else rows
                    for i in need:
                        trackers[i].log_evaluation(metrics, res.step, samples=samples, tags=marker)
                    res.status, res.scalars = "logged", dict(metrics.scalars)
                except Exception as exc:
                    res.status, res.error = "failed", _one_line(exc)
            res.status, res.error = dist.broadcast((res.status, res.error))
            res.seconds = time.perf_counter() - t0
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return report
