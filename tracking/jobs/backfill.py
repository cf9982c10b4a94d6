"""Backfill: rescore saved ``checkpoint-N`` folders and log each into the run at step N.

The loop is four named steps: :func:`~tokcal.jobs.checkpoints.resolve_checkpoints`,
:func:`plan` (what can fail without loading, and which runs still need each step),
:func:`score_one` and :func:`log_one`. The eval source is checked once and tokenised once
(again only for a checkpoint whose tokenizer differs), and every checkpoint is scored with
the same core as ``tokcal extract``. Steps the run already has for these metrics are skipped, so running it again
adds nothing and an interrupted backfill goes on where it stopped. A bad checkpoint is
reported and the others still run.

Checkpoint folders are only read: the per-decision files go to ``tokcal/backfill/`` in the
training output folder (the checkpoints' parent), or to ``output_dir``. With the run's
``tokcal.json`` (``state``), the eval set is checked against the one recorded under the
metric prefix before any model loads, so a different eval set is never mixed into a
series; under a new prefix its identity is recorded there.

Never two points for one (metric, step) unless ``force``: backfill holds each run's
writer lock (:meth:`~tokcal.trackers.base.Tracker.writer_lock`; a second backfill or
sync into the same run on this machine stops at once, naming the holder's PID) and checks
the run again right before each write. A store it cannot write is an error before
anything is scored.

Under ``torchrun`` (a ``torch.distributed`` process group), every rank scores a shard of
the batches; rank 0 gathers the probabilities, writes the files and logs. The batches are
the same as in one process, so the numbers are too.

Example:
    >>> from tokcal.trackers import open_tracker  # doctest: +SKIP
    >>> tracker = open_tracker("mlflow", run_id="4f0c...", tracking_uri="http://127.0.0.1:5000", spool=False)  # doctest: +SKIP
    >>> report = backfill(["out"], "eval.jsonl", tracker, TrackingSettings())  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from tokcal.core.distributed import Dist
from tokcal.core.per_sample import PerSample
from tokcal.core.scores import DecisionScores
from tokcal.core.trajectories import TrajectoryState, flip_scalars
from tokcal.data.sources import EvalSource, as_source
from tokcal.errors import TokcalError, first_line
from tokcal.io import check_writable, exclusive_lock
from tokcal.jobs.checkpoints import (
    check_load_options,
    inspect_checkpoint,
    resolve_checkpoints,
)
from tokcal.jobs.settings import TrackingSettings
from tokcal.trackers.base import MARKER, Tracker, writer_wait

log = logging.getLogger(__name__)

#: The per-decision files' folder in the training output folder, beside the local store.
DECISIONS_DIR = Path("tokcal") / "backfill"


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
    prefix: str = "eval_"  # the metrics' prefix

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

    def summary(self, *, brief: bool = False) -> str:
        """One line per checkpoint (``brief``: the failed ones only), why nothing was
        logged when every step was in the run already, then the counts."""
        lines = []
        for r in self.results:
            what = {"logged": "logged", "skipped": "skipped (already in the run)", "failed": f"FAILED: {r.error}"}
            if not brief or r.status == "failed":
                lines.append(f"step {r.step:>8}  {r.path.name:<24} {what[r.status]}")
        if self.results and len(self.skipped) == len(self.results):
            n = len(self.results)
            whose = "the checkpoint's step is" if n == 1 else f"all {n} checkpoints' steps are"
            other = f"{self.prefix.rstrip('_')}_other_"
            lines.append(f"{whose} in the run already under '{self.prefix}'; use --force to rescore or "
                         f"--metric-prefix {other} for another eval set")
        runs = ", ".join(f"{t.get('backend')} run {t.get('run_id')}" for t in self.targets) or "no run"
        lines.append(f"backfill into {runs}: {len(self.logged)} logged, {len(self.skipped)} skipped, "
                     f"{len(self.failed)} failed")
        return "\n".join(lines)


# ---------------------------------------------------------------------------- steps


def decisions_folder(checkpoint: Path, output_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where a checkpoint's per-decision file goes: ``output_dir``, else ``tokcal/backfill``
    in the training output folder that holds the checkpoint (never the checkpoint itself).

    Example:
        >>> decisions_folder(Path("/runs/out/checkpoint-500"))
        PosixPath('/runs/out/tokcal/backfill')
    """
    return Path(output_dir) if output_dir is not None else checkpoint.parent / DECISIONS_DIR


def decisions_path(checkpoint: Path, output_dir: str | os.PathLike[str] | None = None,
                   prefix: str = "eval_") -> Path:
    """``<folder>/<checkpoint name>.decisions.jsonl`` (:func:`decisions_folder`); another
    prefix than ``eval_`` is in the name, so two eval sets never overwrite each other's.

    Example:
        >>> decisions_path(Path("/runs/out/checkpoint-500"), prefix="eval_holdout_").name
        'checkpoint-500.eval_holdout.decisions.jsonl'
    """
    tag = "" if prefix == "eval_" else f".{prefix.rstrip('_')}"
    return decisions_folder(checkpoint, output_dir) / f"{checkpoint.name}{tag}.decisions.jsonl"


def plan(
    checkpoints: Sequence[tuple[Path, int]],
    trackers: Sequence[Any],
    *,
    key: str,
    force: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    prefix: str = "eval_",
) -> tuple[list[CheckpointResult], dict[int, list[int]], bool]:
    """Every problem that shows without loading a model, and which trackers need each step.

    Returns:
        One :class:`CheckpointResult` per checkpoint (``"pending"``, or ``"failed"`` with
        the reason), for each step the indices of the trackers that do not have it yet
        (all of them with ``force``), and whether any run has steps under ``key`` already.
    """
    results: list[CheckpointResult] = []
    for path, step in checkpoints:
        res = CheckpointResult(path, step, "pending", output=decisions_path(path, output_dir, prefix))
        try:
            inspect_checkpoint(path, allow_pickle=allow_pickle)
        except TokcalError as exc:
            res.status, res.error = "failed", str(exc)
        results.append(res)
    logged = [set(t.logged_steps(key)) for t in trackers]
    have = [set() if force else h for h in logged]
    need = {r.step: [i for i, h in enumerate(have) if r.step not in h] for r in results}
    return results, need, any(logged)


class ExampleCache:
    """The source's examples, built once per :meth:`EvalSource.cache_key`."""

    def __init__(self, source: EvalSource, *, progress: bool = False) -> None:
        self.source, self.progress = source, progress
        self._built: dict[str, list[Any]] = {}

    @property
    def builds(self) -> int:
        """How many times the eval set was tokenised."""
        return len(self._built)

    @property
    def latest(self) -> list[Any] | None:
        """The examples built last (``None`` before any)."""
        return next(reversed(self._built.values()), None) if self._built else None

    def get(self, tokenizer: Any, name: str) -> list[Any]:
        key = self.source.cache_key(tokenizer)
        if key not in self._built:
            if self._built:
                log.info("%s: its tokenizer differs from the previous checkpoints'; tokenising again", name)
            self._built[key] = self.source.examples(tokenizer, progress=self.progress)
        return self._built[key]


def score_one(res: CheckpointResult, cache: ExampleCache, spec: Any, dist: Dist, *, max_tokens: int,
              progress: bool, load_kw: Mapping[str, Any], engine: Any = None, mode: str = "teacher-forced",
              max_new_tokens: int = 512) -> tuple[DecisionScores | None, str | None]:
    """Load and score one checkpoint (this rank's share under torchrun), then join the
    ranks: the scores in sample order on rank 0, or the first rank's error on every rank."""
    from tokcal.engines import get_engine
    from tokcal.engines.base import score_with

    engine = engine if engine is not None else get_engine("hf")
    scores, error, examples = None, None, []
    try:
        with engine.open(res.path, source=cache.source, **load_kw) as session:
            examples = cache.get(session.tokenizer, res.path.name)
            desc = f"step {res.step}" + (f" (rank 0 of {dist.world})" if dist.on else "")
            scores = score_with(session, examples, spec, source=cache.source, mode=mode, max_tokens=max_tokens,
                                max_new_tokens=max_new_tokens, progress=progress and dist.main, desc=desc,
                                shard=(dist.rank, dist.world) if dist.on else None)
    except Exception as exc:  # one bad checkpoint must not stop the others: reported in the summary
        error = first_line(exc, with_type=not isinstance(exc, TokcalError))
    finally:
        _release_memory()
    if not dist.on:
        return scores, error
    gathered = dist.gather((error, scores if error is None else None))  # one collective per checkpoint
    errors = [e for e, _ in gathered if e]
    if errors:
        return None, errors[0]
    merged = DecisionScores.concat([p for _, p in gathered], gathered[0][1].labels).sorted()
    merged.sample_ids = [e.sample_id for e in examples]
    return merged, None


def log_one(res: CheckpointResult, scores: DecisionScores, trackers: Sequence[Any], settings: TrackingSettings,
            *, prefix: str, tags: Mapping[str, str], force: bool = False,
            history: TrajectoryState | None = None) -> int:
    """Write the per-decision JSONL and log the evaluation into each tracker at its step,
    unless (without ``force``) the run has that step by now; returns how many logged it.

    ``history`` holds the decisions of the checkpoints scored before this one (in step
    order): from the second on, the evaluation carries the flips since the previous one."""
    import warnings

    from tokcal.io import write_jsonl

    if scores.nonfinite:  # left out of the metrics and the file, counted in decision_nonfinite
        warnings.warn(scores.nonfinite_message(str(res.path)), stacklevel=2)
    metrics = scores.metrics(n_bins=settings.n_bins, hist_bins=settings.hist_bins, prefix=prefix)
    record = PerSample.from_scores(scores)
    if history is not None and len(record) and (history.last_step is None or res.step >= history.last_step):
        flips = history.update(record.keys, record.correct, step=res.step)
        if history.evaluations > 1:
            metrics.scalars.update(flip_scalars(flips, prefix))
    rows = scores.records()
    write_jsonl(res.output, rows)
    samples = None
    if settings.log_samples:
        samples = rows[: settings.max_samples] if settings.max_samples else rows
    per_sample = record if settings.log_per_sample else None
    logged = 0
    for tracker in trackers:
        if not force and res.step in tracker.logged_steps(f"{prefix}decision_samples"):
            log.info("step %d is in %s run %s by now; not logged again", res.step, tracker.name, tracker.run_id)
            continue
        tracker.log_evaluation(metrics, res.step, samples=samples, per_sample=per_sample, tags=dict(tags),
                               scalars=settings.metrics)
        logged += 1
    res.scalars = dict(metrics.scalars)
    return logged


# ----------------------------------------------------------------------------- the loop


def backfill(
    checkpoints: Iterable[str | os.PathLike[str]],
    data: EvalSource | str | os.PathLike[str],
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
    state: str | os.PathLike[str] | None = None,
    cache: ExampleCache | None = None,
    history: TrajectoryState | None = None,
    engine: str | Any = "hf",
    engine_options: Mapping[str, Any] | None = None,
    mode: str = "teacher-forced",
    max_new_tokens: int = 512,
    **load_kw: Any,
) -> BackfillReport:
    """Rescore checkpoints and log each into ``trackers`` at its step, in step order.

    Args:
        checkpoints: output folders, checkpoint folders or globs (see
            :func:`~tokcal.jobs.checkpoints.resolve_checkpoints`).
        data: an :class:`~tokcal.data.sources.EvalSource` (a data file, LLaMA-Factory's
            pipeline, ...) or a data file path (then ``chat_template``/``max_samples`` apply).
        trackers: a :class:`~tokcal.trackers.base.Tracker` or a list of them (open them
            with ``spool=False`` so a failed call fails its checkpoint). Under torchrun only
            rank 0's are used; other ranks may pass ``[]``.
        settings: spec, ``n_bins``, ``hist_bins``, ``log_samples``/``max_samples`` (the
            per-sample table); usually :func:`~tokcal.jobs.state.settings_from_state` plus flags.
        force: log steps the run already has again.
        output_dir: where the per-decision JSONL files go (default: ``tokcal/backfill`` in
            the folder holding the checkpoints; checkpoint folders are never written).
        metric_prefix: the metrics' prefix, as the Trainer names them (``eval_``).
        max_tokens: padded tokens per batch.
        tags: more tags for every backfilled evaluation (:data:`MARKER` is always there).
        state: the run's ``tokcal.json``: the eval set must be the one it records under
            ``metric_prefix`` (checked before any model loads); under a prefix with no
            record and no steps yet, this eval set's identity is recorded there.
        cache, history: the tokenised eval set and the decisions of earlier checkpoints, kept
            across calls by a caller that backfills one checkpoint at a time (``--watch``).
        engine, engine_options: ``"hf"`` (transformers), ``"vllm"`` (with vLLM's engine
            arguments) or an :class:`~tokcal.engines.Engine`; one checkpoint is loaded at a time.
        mode, max_new_tokens: ``"generate"`` also scores the model's own greedy answers
            (``gen_`` metrics beside the teacher-forced ones).
        **load_kw: :func:`~tokcal.jobs.checkpoints.load_checkpoint` options (``tokenizer``,
            ``allow_pickle``, ``device``, ``dtype``, ``trust_remote_code``).

    Returns:
        A :class:`BackfillReport`; nothing raises for one bad checkpoint.

    Raises:
        TokcalError: before any scoring, for no checkpoints, a bad eval set (answers
            without any decision token, another eval set than the one recorded under
            ``metric_prefix``) or a folder the per-decision files cannot go to.
    """
    from tokcal.engines import Engine, check_mode, get_engine

    settings = settings or TrackingSettings()
    dist = Dist()
    check_mode(mode, max_new_tokens)
    runner = engine if isinstance(engine, Engine) else get_engine(engine, engine_options)
    trackers = ([trackers] if isinstance(trackers, Tracker) else list(trackers)) if dist.main else []
    check_load_options(load_kw.get("device"), load_kw.get("dtype"), max_tokens=max_tokens,
                       tokenizer=load_kw.get("tokenizer"))
    source = as_source(data, chat_template=chat_template, max_samples=max_samples)
    checkpoints = resolve_checkpoints(checkpoints)
    what = "the per-decision files (--output-dir" + (")" if output_dir is not None else " picks another folder)")
    for folder in dict.fromkeys(decisions_folder(p, output_dir) for p, _ in checkpoints):
        check_writable(folder, what, create=False)  # a file written and removed; nothing made yet
    source.check()
    eval_set = EvalSetCheck(settings.spec, metric_prefix, state)
    with ExitStack() as locks, _frozen_survivors():
        _claim(trackers, locks, dist)
        results, need, existing = plan(checkpoints, trackers, key=f"{metric_prefix}decision_samples", force=force,
                                       output_dir=output_dir, allow_pickle=bool(load_kw.get("allow_pickle", False)),
                                       prefix=metric_prefix)
        need, n_trackers, existing = dist.broadcast((need, len(trackers), existing))
        report = BackfillReport(results, [t.describe() for t in trackers], prefix=metric_prefix)
        cache = cache if cache is not None else ExampleCache(source, progress=progress and dist.main)
        for res in results:
            if res.status == "pending" and n_trackers and not need[res.step]:
                res.status = "skipped"
        first = next((r for r in results if r.status == "pending"), None)
        if first is None and eval_set.recorded is not None:  # nothing to score: still say when the data differs
            first = next((r for r in results if r.status != "failed"), None)
        if first is not None:
            eval_set.check_before_loading(first.path, cache, load_kw)
            if first.status == "pending":
                runner.check(first.path, cache.latest, source=source)
        eval_set.may_record = not existing
        if existing and eval_set.recorded is None and dist.main:
            log.warning("the run has steps under '%s' already and no record of their eval set, so tokcal cannot "
                        "check that they used this one; if not, pass --metric-prefix %s", metric_prefix,
                        other_prefix(metric_prefix))
        marker = {**MARKER, **runner.tags(), **dict(tags or {})}
        history = history if history is not None else TrajectoryState()  # flips between the checkpoints scored
        with _bar(len(results), enabled=progress and dist.main) as bar:
            for res in results:
                if res.status == "pending":
                    bar.set_postfix_str(res.path.name)
                    _run_one(res, cache, settings, dist, [trackers[i] for i in need[res.step] if i < len(trackers)],
                             marker=marker, prefix=metric_prefix, max_tokens=max_tokens, progress=progress,
                             load_kw=load_kw, force=force, history=history, eval_set=eval_set,
                             scoring=dict(engine=runner, mode=mode, max_new_tokens=max_new_tokens))
                bar.update(1)
    report.tokenizations = cache.builds
    return report


def other_prefix(prefix: str) -> str:
    """A prefix for another eval set, for messages: ``eval_`` -> ``eval_other_``."""
    return f"{prefix.rstrip('_')}_other_"


class EvalSetCheck:
    """Keeps one series to one eval set: the identity (size and fingerprint of its
    decisions, :func:`~tokcal.core.identity.eval_set_identity`) that ``tokcal.json`` records
    under the prefix must be this data's, checked before any model loads and again on each
    checkpoint's scores; a new prefix's identity is recorded after its first logged step.

    Args:
        spec: the decision spec (which tokens are decisions).
        prefix: the metrics' prefix.
        state: the run's ``tokcal.json``, or ``None`` (nothing to check or record).
    """

    def __init__(self, spec: Any, prefix: str, state: str | os.PathLike[str] | None) -> None:
        from tokcal.jobs.state import read_state, recorded_eval_set

        self.spec, self.prefix = spec, prefix
        self.state = Path(state) if state is not None else None
        self.recorded = recorded_eval_set(read_state(self.state), prefix) if self.state is not None else None
        self.expected = self.recorded  # what every checkpoint's decisions must be
        self.may_record = True  # False when the run has steps under the prefix already (not ours to vouch for)
        self.name = "this eval set"

    def check_before_loading(self, checkpoint: Path, cache: ExampleCache, load_kw: Mapping[str, Any]) -> None:
        """With the first checkpoint's tokenizer only: answers without any decision token,
        or another eval set than the recorded one, stop here."""
        from tokcal.core.identity import eval_set_identity
        from tokcal.jobs.checkpoints import checkpoint_tokenizer
        from tokcal.jobs.extract import find_eval_decisions

        source = cache.source
        self.name = f"the eval set {source.name}" if getattr(source, "name", None) else self.name
        try:
            tokenizer = checkpoint_tokenizer(checkpoint, tokenizer=load_kw.get("tokenizer"),
                                             trust_remote_code=bool(load_kw.get("trust_remote_code")),
                                             allow_pickle=bool(load_kw.get("allow_pickle")),
                                             processor_options=source.processor_options())
        except TokcalError as exc:  # that checkpoint fails on its own; the others are checked when scored
            log.info("%s: %s; the eval set is checked on the scores instead", checkpoint.name, exc)
            return
        tokenizer = source.tokenizer_for(tokenizer)
        found = find_eval_decisions(cache.get(tokenizer, checkpoint.name), self.spec, tokenizer)
        self.check(eval_set_identity(found.sample_index, found.gt, self.spec.labels))

    def check(self, identity: Mapping[str, Any]) -> None:
        """Raise when ``identity`` is not the expected eval set's; the first one seen is expected after."""
        from tokcal.core.identity import same_eval_set

        if self.expected is None:
            self.expected = dict(identity)
            return
        if same_eval_set(self.expected, dict(identity)) is False:
            where = f"recorded in {self.state}" if self.recorded is not None else "scored first"
            raise TokcalError(
                f"{self.name} is not the one logged under '{self.prefix}': {identity['size']} decisions "
                f"(fingerprint {identity['fingerprint']}) here, {self.expected.get('size')} (fingerprint "
                f"{self.expected.get('fingerprint')}) {where}; pass --metric-prefix {other_prefix(self.prefix)} "
                "to log it as a separate series"
            )

    def record(self) -> None:
        """After a step was logged: record the identity under a new prefix (main process only)."""
        from tokcal.jobs.state import record_eval_set

        if self.state is not None and self.recorded is None and self.may_record and self.expected is not None:
            record_eval_set(self.state, self.prefix, self.expected)
            self.recorded = self.expected


_FREEZE = False  # set inside backfill(): see _frozen_survivors


@contextmanager
def _frozen_survivors() -> Iterator[None]:
    """While backfill runs, what survives each checkpoint's clean-up (modules, the tokenizer,
    the examples) moves to the garbage collector's permanent generation, so the full
    collection after each checkpoint only looks at what that checkpoint made: about 0.2 s
    less per checkpoint (0.2 ms instead of 0.18 s). All of it is collectable again after."""
    global _FREEZE
    _FREEZE = True
    try:
        yield
    finally:
        _FREEZE = False
        gc.unfreeze()


def _release_memory() -> None:
    """Free the model just deleted (HF models hold reference cycles) before the next loads."""
    gc.collect()
    if _FREEZE:
        gc.freeze()


def _claim(trackers: Sequence[Tracker], locks: ExitStack, dist: Dist) -> None:
    """On the logging rank: every store writable and every run's writer lock held, before
    anything is scored; every rank stops with the same one-line error otherwise."""
    error, held = None, set()
    try:
        for t in trackers:
            t.check_writable()
            lock = t.writer_lock().resolve()
            if lock not in held:  # the same run given twice is one writer
                locks.enter_context(exclusive_lock(lock, f"{t.name} run {t.run_id}", wait=writer_wait()))
                held.add(lock)
    except TokcalError as exc:
        error = str(exc)
    error = dist.broadcast(error)
    if error:
        raise TokcalError(error)


def _run_one(res: CheckpointResult, cache: ExampleCache, settings: TrackingSettings, dist: Dist,
             trackers: Sequence[Any], *, marker: Mapping[str, str], prefix: str, max_tokens: int,
             progress: bool, load_kw: Mapping[str, Any], force: bool = False,
             history: TrajectoryState | None = None, eval_set: EvalSetCheck | None = None,
             scoring: Mapping[str, Any] | None = None) -> None:
    """Score one checkpoint, check its decisions are the eval set's, log it on rank 0, and
    agree on its outcome on every rank."""
    t0 = time.perf_counter()
    scores, error = score_one(res, cache, settings.spec, dist, max_tokens=max_tokens, progress=progress,
                              load_kw=load_kw, **dict(scoring or {}))
    other_set = None
    if error is None and dist.main and eval_set is not None:
        try:
            eval_set.check(scores.identity())
        except TokcalError as exc:
            other_set = str(exc)
    other_set = dist.broadcast(other_set)
    if other_set:
        raise TokcalError(other_set)  # nothing of this checkpoint was written
    status = "logged"
    if error is None and dist.main:
        try:
            if trackers and not log_one(res, scores, trackers, settings, prefix=prefix, tags=marker, force=force,
                                        history=history):
                status = "skipped"  # another writer logged the step meanwhile
            elif eval_set is not None:
                eval_set.record()
        except Exception as exc:  # a failed write or tracker call fails this checkpoint only
            error = first_line(exc, with_type=not isinstance(exc, TokcalError))
    res.status, res.error = dist.broadcast(("failed", error) if error else (status, None))
    res.seconds = time.perf_counter() - t0


@contextmanager
def _bar(total: int, *, enabled: bool) -> Iterator[Any]:
    """A checkpoints progress bar on stderr, or a stand-in that does nothing."""
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="checkpoints", unit="ckpt", file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    def update(self, n: int = 1) -> None:
        """Nothing to show."""

    def set_postfix_str(self, text: str) -> None:
        """Nothing to show."""
