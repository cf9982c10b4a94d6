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
import glob
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
    checkpoint_step,
    find_checkpoints,
    inspect_checkpoint,
)
from tracking.jobs.settings import TrackingSettings

log = logging.getLogger(__name__)

STATE_FILE = "tokcal.json"  # written by callbacks.decision at train begin
#: The marker every backfilled evaluation carries (W&B: ``eval/tag_tokcal_backfill`` in
#: the row; MLflow: a run tag and the ``tags`` of each ``bins_step_*.json``; local: the
#: line's ``tags``).
MARKER: dict[str, str] = {"tokcal_backfill": "true"}
DECISIONS_FILE = "tokcal_decisions.jsonl"
_GLOB_CHARS = "*?["


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


# ------------------------------------------------------------------------- checkpoints


def _looks_like_checkpoint(p: Path) -> bool:
    return any((p / f).is_file() for f in ("config.json", "adapter_config.json", "trainer_state.json")) or (
        p.name.startswith("checkpoint-") and p.name[len("checkpoint-"):].isdigit()
    )


def resolve_checkpoints(sources: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, int]]:
    """``(folder, step)`` in step order from output folders, checkpoint folders or globs.

    An output folder stands for its ``checkpoint-N`` sub-folders; a glob for its matching
    folders. The step is ``trainer_state.json``'s ``global_step`` (else the folder name).

    Raises:
        TokcalError: nothing found, a path that does not exist, a step that cannot be told,
            or two checkpoints with the same step.
    """
    found: dict[Path, None] = {}
    sources = list(sources)
    if not sources:
        raise TokcalError("no checkpoints given; expected an output folder, checkpoint folders or a glob")
    for src in sources:
        text = str(src)
        if any(c in text for c in _GLOB_CHARS) and not Path(text).exists():
            matches = [Path(m) for m in sorted(glob.glob(text)) if Path(m).is_dir()]
            if not matches:
                raise TokcalError(f"no checkpoint folder matches {text!r}")
            found.update(dict.fromkeys(m.resolve() for m in matches))
            continue
        p = Path(text)
        if not p.exists():
            raise TokcalError(f"checkpoint or output folder not found: {p}")
        if not p.is_dir():
            raise TokcalError(f"expected a checkpoint or output folder, got a file: {p}")
        subs = find_checkpoints(p)
        if not subs and _looks_like_checkpoint(p):
            found[p.resolve()] = None
            continue
        # An output folder stands for its checkpoints, also when it holds the final model
        # too (LLaMA-Factory and Trainer.save_model write one there).
        if not subs:
            raise TokcalError(f"no checkpoint-N folders in {p}; expected the Trainer's output_dir or checkpoint paths")
        found.update(dict.fromkeys(s.resolve() for s in subs))
    plan = sorted(((p, checkpoint_step(p)) for p in found), key=lambda x: (x[1], str(x[0])))
    for (a, sa), (b, sb) in zip(plan, plan[1:]):
        if sa == sb:
            raise TokcalError(f"{a} and {b} are both step {sa}; expected one checkpoint per step (pass one of them)")
    return plan


# ------------------------------------------------------------------- run and settings


def find_state(paths: Iterable[str | os.PathLike[str]]) -> Path | None:
    """The ``tokcal.json`` in a given folder, or beside the checkpoints (their parent)."""
    seen: list[Path] = []
    for src in paths:
        p = Path(str(src))
        if any(c in str(src) for c in _GLOB_CHARS) and not p.exists():
            p = Path(glob.glob(str(src))[0]) if glob.glob(str(src)) else p.parent
        for cand in (p, p.parent):
            if cand not in seen:
                seen.append(cand)
    for folder in seen:
        if (folder / STATE_FILE).is_file():
            return folder / STATE_FILE
    return None


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``tokcal.json`` (``{"trackers": [...], <settings>}``)."""
    from tracking.config import load_json_object

    return load_json_object(path)


def settings_from_state(state: Mapping[str, Any] | None) -> TrackingSettings:
    """The tracking settings recorded in ``tokcal.json`` (defaults when there is none)."""
    if not state:
        return TrackingSettings()
    return TrackingSettings.from_dict({k: v for k, v in state.items() if k != "trackers"})


def tracker_targets(
    state: Mapping[str, Any] | None,
    *,
    backend: str | None = None,
    run_id: str | None = None,
    project: str | None = None,
    entity: str | None = None,
    tracking_uri: str | None = None,
    local_dir: str | None = None,
    default_local_dir: str | None = None,
) -> list[dict[str, Any]]:
    """``open_tracker`` keyword arguments for the run(s) to backfill into.

    The runs recorded in ``tokcal.json`` (``state["trackers"]``), narrowed to ``backend``
    when given; each flag that is given overrides the recorded value.

    Raises:
        TokcalError: no run can be told (no ``tokcal.json`` and no ``--backend``/``--run-id``),
            or a recorded MLflow URI had its password redacted and none is given.
    """
    recorded = [t for t in (state or {}).get("trackers", []) if isinstance(t, dict) and t.get("backend")]
    if backend is not None:
        entries = [t for t in recorded if t["backend"] == backend] or [{"backend": backend}]
    elif recorded:
        entries = recorded
    else:
        raise TokcalError(
            "no run to backfill into: expected a tokcal.json (written by the training callback) beside the "
            "checkpoints, or --backend and --run-id"
        )
    if run_id is not None and len(entries) > 1:
        names = ", ".join(t["backend"] for t in entries)
        raise TokcalError(f"--run-id names one run but tokcal.json records several ({names}); pass --backend too")
    out = []
    for t in entries:
        name = t["backend"]
        kw: dict[str, Any] = {"backend": name, "run_id": run_id or t.get("run_id")}
        if not kw["run_id"]:
            raise TokcalError(f"no {name} run id recorded; expected --run-id (see docs/backfill.md to find it)")
        if name == "mlflow":
            uri = tracking_uri or t.get("tracking_uri")
            if uri and "***" in uri and not tracking_uri:
                env = os.environ.get("MLFLOW_TRACKING_URI")
                if not env:
                    raise TokcalError(
                        f"tokcal.json records the MLflow URI with its password hidden ({uri}); expected "
                        "--tracking-uri or MLFLOW_TRACKING_URI to give it"
                    )
                uri = env
            kw["tracking_uri"] = uri
        elif name == "wandb":
            kw["project"] = project or t.get("project")
            kw["entity"] = entity or t.get("entity")
        else:
            recorded_dir = Path(t["local_dir"]).parent if t.get("local_dir") else None
            kw["local_dir"] = local_dir or recorded_dir or default_local_dir or "tokcal-runs"
        out.append(kw)
    return out


def open_targets(targets: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Open each run without a spool (a failed call is a failed checkpoint, not a file)."""
    from tracking.trackers import open_tracker

    opened: list[Any] = []
    try:
        for kw in targets:
            kw = {k: v for k, v in kw.items() if v is not None}
            opened.append(open_tracker(spool=False, **kw))
    except BaseException:
        for t in opened:
            t.close()
        raise
    return opened


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
