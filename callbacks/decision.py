"""Trainer glue: decision probabilities and calibration at every evaluation.

The callback reads the logits that the Trainer's own eval forward computes (a forward hook
on the model), so evaluation costs no extra pass and ``eval_loss`` is untouched. Scoring,
metrics and logging are the same code that ``tokcal extract`` and ``tokcal backfill`` use.
"""

from __future__ import annotations

import itertools
import atexit
import logging
import sys
import time
import warnings
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from tokcal.core.capture import DecisionCapture
from tokcal.core.distributed import Dist, all_gather
from tokcal.core.identity import eval_set_identity
from tokcal.core.metrics import DecisionMetrics
from tokcal.core.per_sample import PerSample
from tokcal.core.scores import DecisionScores
from tokcal.core.scoring import in_own_forward, score_batches
from tokcal.core.spec import DecisionSpec, ResolvedSpec
from tokcal.core.trajectories import (
    TrajectoryState,
    correct_from_probs,
    decision_keys,
    flip_scalars,
)
from tokcal.errors import TokcalError
from tokcal.jobs.settings import TrackingSettings

log = logging.getLogger(__name__)

#: How many callers up from the forward hook to look for the labels the Trainer popped
#: (compute_loss, prediction_step and evaluation_loop sit within a dozen frames, DeepSpeed's
#: and accelerate's wrappers included).
CALLER_DEPTH = 40
#: How many callers up from ``on_evaluate`` to look for the ``metric_key_prefix`` that the
#: Trainer's ``evaluate`` was called with (the callback handler and ``evaluate`` sit 3-4 up).
PREFIX_DEPTH = 12
#: How long one live write waits for a run's writer lock that ``tokcal backfill`` or
#: ``tokcal sync`` holds (in the background thread; the training thread never waits).
LOCK_WAIT_S = 2.0
#: At the end of training (``flush``): how long writes held back by such a lock wait for it.
FINAL_LOCK_WAIT_S = 60.0
#: After each live write, the background thread leaves the writer lock free this long, so
#: that a backfill or sync waiting for it gets its turn between evaluations.
LOCK_GAP_S = 0.1


@dataclass
class _Slot:
    """One backend the callback logs to: its tracker once opened (``None`` before, or when
    opening failed), the (prefix) -> steps this process logged into it (a backend logged
    in the training thread is not asked again), and the evaluations held back while
    another tokcal process (backfill, sync) held the run's writer lock."""

    name: str
    background: bool  # opened and logged in the background thread
    tracker: Any = None
    steps: dict[str, set[int]] = field(default_factory=dict)
    deferred: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass
class _Run:
    """What belongs to one Trainer's run (its ``output_dir``): the backends' runs, and per
    eval set (metric prefix) how many evaluations it had (``every``), its flip history
    (per eval-set identity too) and the identity recorded in ``tokcal.json``."""

    output_dir: str
    slots: list[_Slot] = field(default_factory=list)
    evals: dict[str, int] = field(default_factory=dict)
    histories: dict[tuple[str, str], TrajectoryState] = field(default_factory=dict)
    eval_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    trained: bool = False  # a train() began in this run
    training: bool = False  # between train begin and train end: an exit now means training failed
    resumed_at: int | None = None  # the checkpoint step a resumed training started from
    recorded: dict[str, Any] | None = None  # the tokcal.json a resumed training continues


def _close_at_exit(ref: "weakref.ReferenceType[DecisionTrackingCallback]") -> None:
    """At interpreter exit: end the runs tokcal opened (FAILED when training did not end)."""
    callback = ref()
    if callback is not None:
        callback.close()



class DecisionTrackingCallback(TrainerCallback):
    """Log decision probabilities and calibration at every evaluation.

    Works with `Trainer`, `Seq2SeqTrainer`, TRL's `SFTTrainer` and LLaMA-Factory's trainer,
    on one process or many (DDP, DeepSpeed ZeRO-3, FSDP): every rank captures its share,
    the world-process-zero logs. The scalars also go into the evaluation's metrics dict on
    every rank, so `metric_for_best_model="eval_decision_accuracy"` (any tokcal scalar),
    `load_best_model_at_end` and an `EarlyStoppingCallback` placed after this one use them.

    Args:
        spec (`DecisionSpec`, *optional*):
            Labels, answer prefix and variants. Defaults to Accept/Reject after `\\boxed{`.
        config (`str` or `Path`, *optional*):
            A tokcal YAML (see `configs/tokcal.yaml`) with `spec:` and `tracking:` sections.
        backend (`str` or list of `str`, *optional*, defaults to `"auto"`):
            `"wandb"`, `"mlflow"`, `"local"`, or `"auto"` to follow `args.report_to`
            (no W&B or MLflow there means the local store in `output_dir/tokcal`).
        tokenizer (*optional*):
            Used to resolve the decision tokens; defaults to the Trainer's `processing_class`
            (a processor's `.tokenizer` for vision-language models).
        **options:
            Any field of [`~tokcal.jobs.settings.TrackingSettings`]: `every`, `n_bins`,
            `hist_bins`, `log_per_sample`, `log_samples`, `sample_text`, `max_samples`, `scorer`,
            `metrics` (`"default"`: the headline charts in MLflow and W&B; `"all"`; or a list of
            names; every scalar still goes into the evaluation's metrics dict either way),
            `project`, `entity`, `tracking_uri`, `run_id`, `local_dir`, `verbose` (`False`: no
            line at train begin saying where the numbers go, none per evaluation).

    Example:

    ```python
    from tokcal import DecisionTrackingCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      processing_class=tokenizer, callbacks=[DecisionTrackingCallback()])
    trainer.train()
    ```
    """

    def __init__(
        self,
        spec: DecisionSpec | None = None,
        *,
        config: str | Path | None = None,
        backend: str | Sequence[str] = "auto",
        tokenizer: Any = None,
        **options: Any,
    ) -> None:
        settings = TrackingSettings.from_yaml(config) if config else TrackingSettings()
        changes = dict(options)
        if spec is not None:
            changes["spec"] = spec
        if backend != "auto":
            changes["backend"] = backend if isinstance(backend, str) else tuple(backend)
        self.settings = settings.replace(**changes)
        self.tokenizer = tokenizer
        self.resolved: ResolvedSpec | None = None
        self.capture: DecisionCapture | None = None
        self.trackers: list[Any] = []  # every run's opened trackers
        self._hooks: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()  # model -> forward hook
        self._no_logits = False
        self._warned: set[str] = set()
        self._executor: Any = None
        self._pending: list[Any] = []
        self._runs: dict[str, _Run] = {}  # per output folder (one Trainer's run)
        self._exit_hook: Any = None
        if tokenizer is not None:
            self._resolve(tokenizer)

    # -- setup -------------------------------------------------------------------------
    def _resolve(self, tokenizer: Any) -> None:
        tok = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap a tokenizer
        self.resolved = self.settings.spec.resolve(tok)
        s = self.settings
        keep = 256 if s.sample_text and (s.log_samples or s.log_per_sample) else 0
        self.capture = DecisionCapture(self.resolved, keep_inputs=keep)
        self._tokenizer = tok

    def _attach(self, model: Any, processing_class: Any) -> None:
        if self.resolved is None:
            if processing_class is None:
                raise TokcalError(
                    "DecisionTrackingCallback needs a tokenizer: pass processing_class= to the Trainer "
                    "or tokenizer= to the callback"
                )
            self._resolve(processing_class)
        # Every model given to a Trainer with this callback keeps its hook (a sweep's Trainers
        # may evaluate again after the next one trained).
        if model is not None and model not in self._hooks and self.settings.scorer != "pass":
            self._hooks[model] = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def _detach(self) -> None:
        for hook in list(self._hooks.values()):
            hook.remove()
        self._hooks.clear()

    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if module.training or self.capture is None or in_own_forward():
            return  # training steps and tokcal's own scoring forwards
        if kwargs.get("past_key_values") is not None:
            return  # a generation step (predict_with_generate), not an eval batch
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        labels = kwargs.get("labels")
        if labels is None and isinstance(input_ids, torch.Tensor):
            labels = _popped_labels(tuple(input_ids.shape))
        if labels is None:
            if isinstance(input_ids, torch.Tensor):
                self.capture.add_unlabeled(input_ids.shape[0])  # keeps its place in sampler order
            return
        logits = getattr(output, "logits", None)
        if logits is None and isinstance(output, (tuple, list)) and len(output) > 1:
            logits = output[1]
        if logits is None or logits.dim() != 3 or logits.shape[:2] != labels.shape:
            self._no_logits = True
            return
        try:
            self.capture.add_logits(logits.detach(), labels, kwargs.get("input_ids"))
        except Exception as exc:  # never break the Trainer's eval forward
            self._warn_once("capture", f"tokcal could not read this eval batch: {exc}")

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(msg, stacklevel=2)

    def _say(self, line: str) -> None:
        """One line for the person running the training (``verbose``), where the Trainer's
        own progress and eval lines go: printed above any progress bar, whatever the
        logging level."""
        if not self.settings.verbose:
            return
        from tqdm.auto import tqdm

        from tokcal.trackers.base import redact

        tqdm.write(redact(line))

    # -- runs --------------------------------------------------------------------------
    def _run_for(self, args: TrainingArguments) -> _Run:
        """The run of the Trainer whose ``args`` these are (made on first use)."""
        key = _run_key(args)
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(str(args.output_dir))
        return run

    def _begin_run(self, args: TrainingArguments, state: TrainerState) -> _Run:
        """The run this ``train()`` logs into: the one its output folder has in this process
        (evaluations before training), the run recorded in ``output_dir/tokcal.json`` when
        training resumes from a checkpoint, else a new one (a second ``train()`` into the
        same folder ends the previous run first). Every rank calls this."""
        key = _run_key(args)
        resumed = state.global_step > 0
        run = self._runs.get(key)
        if run is not None and run.trained and not resumed:
            self._close_run(run, failed=run.training)
            run = None
        if run is None:
            run = self._runs[key] = _Run(str(args.output_dir))
            if resumed:
                self._resume(run, args, state)
        run.trained = run.training = True
        return run

    def _resume(self, run: _Run, args: TrainingArguments, state: TrainerState) -> None:
        """Continue the run that ``tokcal.json`` records: its backends' runs (opened by
        ``_open_trackers``), the eval sets it recorded, and the flips, whose history is
        rebuilt from each eval set's last per-sample record at or before the checkpoint,
        read back from the run itself (the store is the one source of truth; nothing else
        is kept on disk). Rank 0 reads; every rank gets the same history."""
        run.resumed_at = int(state.global_step)
        seeds: dict[tuple[str, str], tuple[Any, Any, int]] = {}
        if state.is_world_process_zero:
            run.recorded = self._recorded_state(args.output_dir)
            if run.recorded is not None:
                from tokcal.jobs.state import EVAL_SETS

                sets = run.recorded.get(EVAL_SETS)
                run.eval_sets = {k: dict(v) for k, v in sets.items() if isinstance(v, dict)} if isinstance(sets, dict) else {}
                seeds = self._history_seeds(run.recorded, run.resumed_at)
        for (prefix, fingerprint), (keys, correct, step) in Dist().broadcast(seeds).items():
            history = run.histories[(prefix, fingerprint)] = TrajectoryState()
            history.update(keys, correct, step=step)

    def _recorded_state(self, output_dir: str) -> dict[str, Any] | None:
        from tokcal.jobs.state import STATE_FILE, read_state

        path = Path(output_dir) / STATE_FILE
        if not path.is_file():
            return None
        try:
            return read_state(path)
        except Exception as exc:  # an unreadable record: a new run, said once
            self._warn_once("resume-state", f"tokcal could not read {path} to continue its run ({exc}); "
                                            "logging into a new run")
            return None

    def _history_seeds(self, recorded: Mapping[str, Any], step: int) -> dict[tuple[str, str], tuple[Any, Any, int]]:
        """(prefix, eval-set fingerprint) -> the last per-sample record's (keys, correct, step)
        at or before ``step``, read back from the first recorded run that can be read."""
        from tokcal.trackers.base import backend_class

        overrides = {"tracking_uri": self.settings.tracking_uri}
        for entry in recorded.get("trackers") or []:
            if not isinstance(entry, dict) or not entry.get("run_id"):
                continue
            try:
                series = backend_class(entry["backend"]).read_described(entry, overrides)
            except Exception as exc:  # the flips are extra: they count again from the next evaluation
                self._warn_once("resume-read", f"tokcal could not read the {entry.get('backend')} run back to "
                                               f"continue its flips ({exc}); they count again from the next evaluation")
                continue
            seeds: dict[tuple[str, str], tuple[Any, Any, int]] = {}
            for s in series:
                points = [p for p in s.points if p.step <= step and p.per_sample is not None and len(p.per_sample)]
                if points:
                    last = points[-1]
                    ps = last.per_sample
                    fingerprint = eval_set_identity(ps.index, ps.gt, ps.labels)["fingerprint"]
                    seeds[(last.metrics.prefix, fingerprint)] = (ps.keys, ps.correct, int(last.step))
            return seeds
        return {}

    def _close_run(self, run: _Run, failed: bool) -> None:
        """Wait for the run's writes, end the backends' runs it opened, forget it."""
        self.flush()
        for slot in run.slots:
            t = slot.tracker
            if t is None:
                continue
            try:
                t.close_failed() if failed else t.close()
            except Exception as exc:  # closing is best effort; say what failed
                self._warn_once(f"close:{t.name}", f"tokcal could not close the {t.name} tracker: {exc}")
            if t in self.trackers:
                self.trackers.remove(t)
        run.slots.clear()
        self._runs = {k: r for k, r in self._runs.items() if r is not run}

    # -- events ------------------------------------------------------------------------
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if kw.get("processing_class") is not None or self.resolved is not None:
            self._attach(kw.get("model"), kw.get("processing_class"))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._attach(kw.get("model"), kw.get("processing_class"))
        run = self._begin_run(args, state)
        if state.is_world_process_zero:
            self._open_trackers(run, args)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.capture is not None and len(self.capture):
            self.capture.clear()  # a stray capture outside evaluate(), e.g. a user's own forward

    def on_predict(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.capture is not None:
            self.capture.clear()

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict | None = None, **kw: Any
    ) -> None:
        self._attach(kw.get("model"), kw.get("processing_class"))
        assert self.capture is not None  # set by _attach
        prefix = _evaluated_prefix(metrics or {})
        run = self._run_for(args)
        dataloader = kw.get("eval_dataloader")
        num_samples = _num_samples(dataloader)
        if self._needs_own_pass(dataloader):
            if self.settings.scorer == "hook":
                self._warn_hook_only()
            else:
                self._own_pass(kw.get("model"), dataloader)
        scores = self.capture.gather(num_samples)  # every rank joins
        if scores.nonfinite and state.is_world_process_zero:  # left out of the metrics, counted in them
            warnings.warn(scores.nonfinite_message(f"tokcal, evaluation at step {state.global_step}"), stacklevel=2)
        unlabeled = self.capture.unlabeled_batches
        first_miss = self.capture.first_miss
        self.capture.clear()
        self._no_logits = False
        count = run.evals[prefix] = self._evaluations_before(run, prefix, state) + 1
        if unlabeled and not len(scores):
            if state.is_world_process_zero:
                self._warn_once("nolabels", "the eval batches carry no 'labels', so tokcal cannot find the answers; "
                                            "keep 'labels' in the eval dataset and let the data collator pass them on")
            return
        identity = self._identity(scores, state.global_step)
        # Every rank holds the same gathered decisions and computes the same numbers: the
        # Trainer picks the best checkpoint (metric_for_best_model) and EarlyStoppingCallback
        # decides on every process, from this dict. The Trainer has logged it already, so
        # nothing is logged twice; keys it has are left alone.
        decision = self._evaluation_metrics(run, scores, prefix, identity, state.global_step)
        if decision is not None and metrics is not None:
            for key, value in decision.scalars.items():
                metrics.setdefault(key, value)
        if not state.is_world_process_zero or (count - 1) % self.settings.every:
            return
        if not len(scores) and not scores.missing:
            self._warn_no_answers(prefix)
            return
        if scores.missing and not len(scores):
            self._warn_missing(first_miss)
        if decision is None:
            return
        try:
            self._log(run, args, state, scores, decision, identity)
        except Exception as exc:  # a tracking error never stops training
            self._warn_once(f"log:{type(exc).__name__}", f"tokcal could not log evaluation at step "
                                                          f"{state.global_step}: {exc}")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.flush()
        run = self._runs.get(_run_key(args))
        if run is not None:
            run.training = False  # the runs stay open for a later evaluate(); close() or exit ends them
        if run is not None and state.is_world_process_zero and run.slots:  # for `backfill --watch`: training is over
            from tokcal.jobs.state import STATE_FILE, record_training_end

            try:
                record_training_end(Path(args.output_dir) / STATE_FILE)
            except (OSError, TokcalError) as exc:
                self._warn_once("state", f"tokcal could not record the end of training in {STATE_FILE}: {exc}")

    def close(self, failed: bool | None = None) -> None:
        """Wait for pending logging, remove the forward hooks, end the runs tokcal opened.

        Args:
            failed: end them as FAILED (MLflow status, W&B exit code 1). By default a run is
                FAILED when its training began and did not reach its end (an exception),
                else FINISHED. A run tokcal only attached to (the Trainer's) stays as it is.

        The callback also calls this at interpreter exit when nobody did.
        """
        self.flush()
        for run in list(self._runs.values()):
            self._close_run(run, failed=run.training if failed is None else failed)
        self.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._detach()
        for t in list(self.trackers):  # opened for no run any more (none expected): closed all the same
            try:
                t.close()
            except Exception as exc:  # closing is best effort; say what failed
                self._warn_once(f"close:{t.name}", f"tokcal could not close the {t.name} tracker: {exc}")
        self.trackers.clear()
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None

    # -- work --------------------------------------------------------------------------
    def _evaluations_before(self, run: _Run, prefix: str, state: TrainerState) -> int:
        """How many evaluations of this eval set the run had before this one: counted here,
        or, the first time after resuming from a checkpoint, read off the Trainer's restored
        log history (one ``<prefix>runtime`` entry per evaluation up to the checkpoint)."""
        if prefix in run.evals:
            return run.evals[prefix]
        if run.resumed_at is None:
            return 0
        return sum(1 for h in state.log_history
                   if f"{prefix}runtime" in h and isinstance(h.get("step"), int) and h["step"] <= run.resumed_at)

    def _identity(self, scores: DecisionScores, step: int) -> dict[str, Any] | None:
        """The eval set's identity (:func:`~tokcal.core.identity.eval_set_identity`); ``None``
        with no decisions, or (with a warning) when it cannot be made."""
        if not len(scores):
            return None
        try:
            return scores.identity()
        except Exception as exc:  # the identity is extra; the evaluation is logged without it
            self._warn_once(f"identity:{type(exc).__name__}", f"tokcal could not fingerprint the eval set at step "
                                                               f"{step}: {exc}")
            return None

    def _warn_no_answers(self, prefix: str) -> None:
        self._warn_once(
            f"noanswers:{prefix}",
            f"the {prefix.rstrip('_')!r} eval set has no supervised tokens (every label is -100), so tokcal found no "
            "answers to score and logs nothing for it; keep the answer's tokens in 'labels' (mask only the prompt)",
        )

    def _needs_own_pass(self, dataloader: Any) -> bool:
        """Whether the hook read nothing usable (no logits, or no batch with labels), or an own
        pass is asked for. Every rank gets the same answer: under ZeRO-3 the own pass's
        forwards are collectives that all ranks must join."""
        assert self.capture is not None
        local = self._no_logits or self.settings.scorer == "pass" or (
            dataloader is not None and self.capture.labeled == 0
        )
        return any(all_gather(bool(local)))

    def _warn_hook_only(self) -> None:
        if self._no_logits:
            self._warn_once("nologits", "the model returned no logits at eval; set scorer='auto' to use an own pass")
        else:
            self._warn_once("hooklabels", "the eval forward got no labels and tokcal found none in the Trainer's "
                                          "batch; set scorer='auto' to score with an own pass over the eval dataloader")

    def _own_pass(self, model: Any, dataloader: Any) -> None:
        """Score the eval dataloader with logits at answer positions only (fallback).

        Under a process group every rank runs the model on every batch (see
        :func:`~tokcal.core.scoring.score_batches`); when no rank's first batch has labels,
        the eval set has none and the pass stops there.
        """
        if model is None or dataloader is None:
            return
        assert self.capture is not None and self.resolved is not None
        capture = self.capture
        capture.clear()
        batches = iter(dataloader)
        first = next(batches, None)
        if first is None:
            return
        if not any(all_gather(first.get("labels") is not None)):
            capture.add_unlabeled(_rows(first))
            return
        for batch, pos, probs in score_batches(model, itertools.chain([first], batches), self.resolved):
            if pos is None:
                capture.add_unlabeled(_rows(batch))
            else:
                capture.add_positions(pos, probs, batch["labels"], batch.get("input_ids"))

    def _warn_missing(self, first_miss: list[int] | None) -> None:
        assert self.resolved is not None
        from tokcal.core.positions import missing_decisions_message

        self._warn_once("missing", missing_decisions_message(self.resolved, self._tokenizer, first_miss))

    def _open_trackers(self, run: _Run, args: TrainingArguments) -> None:
        """Open every backend's run and write ``tokcal.json``, off the training thread where
        the backend allows it (W&B is opened here: it is not thread-safe, and works offline).

        A resumed training reopens the runs its ``tokcal.json`` records. A remote server
        that does not answer gives a tracker that spools the run's creation and every
        evaluation for ``tokcal sync`` (one warning); MLflow calls are bounded.
        """
        if run.slots:
            return
        from tokcal.trackers.base import backend_class

        names = self.settings.backends_for(getattr(args, "report_to", None))
        local_dir = self.settings.local_dir or str(Path(args.output_dir) / "tokcal")
        run_name = getattr(args, "run_name", None)
        background = self.settings.background_logging
        run.slots = [_Slot(name, background and backend_class(name).thread_safe) for name in names]
        for slot in run.slots:
            kwargs = self.settings.tracker_kwargs(slot.name, local_dir=local_dir, run_name=run_name)
            again = self._reopen_kwargs(run, slot.name)
            if again is None:
                kwargs.update(backend_class(slot.name).caller_context(kwargs))  # e.g. the Trainer's active MLflow run
            self._run(slot.background, lambda slot=slot, kwargs=kwargs, again=again:
                      self._open_slot(run, slot, kwargs, again, local_dir))
        # After every open (the background thread runs its work in order).
        self._run(any(s.background for s in run.slots), lambda: (self._write_state(run), self._announce(run)))
        if self._exit_hook is None:
            self._exit_hook = lambda ref=weakref.ref(self): _close_at_exit(ref)
            atexit.register(self._exit_hook)

    def _reopen_kwargs(self, run: _Run, name: str) -> dict[str, Any] | None:
        """How to reopen the ``name`` run that a resumed training's ``tokcal.json`` records
        (``None``: nothing to continue, or a run id was given)."""
        if run.recorded is None or self.settings.run_id is not None:
            return None
        from tokcal.trackers.base import backend_class

        for entry in run.recorded.get("trackers") or []:
            if isinstance(entry, dict) and entry.get("backend") == name and entry.get("run_id"):
                overrides = {"run_id": None, "local_dir": self.settings.local_dir,
                             **{o: getattr(self.settings, o, None) for o in backend_class(name).options}}
                try:
                    return backend_class(name).reopen_kwargs(entry, overrides)
                except Exception as exc:  # a new run instead, said once
                    self._warn_once(f"reopen:{name}", f"tokcal could not continue the recorded {name} run "
                                                      f"{entry.get('run_id')} ({exc}); logging into a new run")
                    return None
        return None

    def _open_slot(self, run: _Run, slot: _Slot, kwargs: dict[str, Any], again: dict[str, Any] | None,
                   local_dir: str) -> None:
        from tokcal.trackers.base import TrackerDisabled

        try:
            t = self._open_or_reopen(slot.name, kwargs, again)
            t.log_config(self.settings.to_dict())  # each tracker keeps it under "tokcal" (redacted)
        except TrackerDisabled as exc:  # nothing logged there would be kept: the local store instead
            if any(s.name == "local" for s in run.slots):
                self._warn_once(f"disabled:{slot.name}", f"tokcal: {exc}; logging to the local store only")
                return
            self._warn_once(f"disabled:{slot.name}", f"tokcal: {exc}; logging to the local store in {local_dir} "
                                                     "instead")
            slot.name = "local"
            self._open_slot(run, slot, {"local_dir": local_dir, "run_name": kwargs.get("run_name")}, None, local_dir)
            return
        except Exception as exc:  # a tracking error never stops training
            self._warn_once(f"open:{slot.name}", f"tokcal could not open the {slot.name} tracker: {exc}")
            return
        slot.tracker = t
        self.trackers.append(t)

    def _open_or_reopen(self, name: str, kwargs: dict[str, Any], again: dict[str, Any] | None) -> Any:
        """The recorded run (resumed training), or a new one when it cannot be reopened (said once)."""
        from tokcal.trackers import open_tracker

        if again is not None:
            try:
                return open_tracker(name, **{**kwargs, **{k: v for k, v in again.items() if v is not None}})
            except Exception as exc:  # a new run instead, said once
                self._warn_once(f"reopen:{name}", f"tokcal could not continue the recorded {name} run "
                                                  f"{again.get('run_id')} ({exc}); logging into a new run")
        return open_tracker(name, **kwargs)

    def _trackers_of(self, run: _Run) -> list[Any]:
        return [s.tracker for s in run.slots if s.tracker is not None]

    def _write_state(self, run: _Run) -> None:
        from tokcal.jobs.state import STATE_FILE, write_state

        try:
            write_state(run.output_dir, [t.describe() for t in self._trackers_of(run)], self.settings,
                        eval_sets=run.eval_sets)
        except OSError as exc:
            self._warn_once("state", f"tokcal could not write {STATE_FILE}: {exc}")

    def _announce(self, run: _Run) -> None:
        """Say once where this run's numbers go: each backend, its run id, how to open it."""
        parts = []
        for t in self._trackers_of(run):
            try:
                where = t.viewer()
            except Exception as exc:  # deliberate: the line is a courtesy; say why it is short
                where = f"(cannot say how to open it: {exc})"
            parts.append(f"{t.name} run {t.run_id or '(not created yet)'}" + (f", {where}" if where else ""))
        if parts:
            self._say("tokcal: decision metrics go to " + "; ".join(parts))

    def _record_eval_set(self, run: _Run, prefix: str, identity: dict[str, Any]) -> None:
        """Put the eval set's identity into ``tokcal.json`` (``eval_sets``), for backfill to compare."""
        from tokcal.jobs.state import STATE_FILE, record_eval_set

        path = Path(run.output_dir) / STATE_FILE
        try:
            record_eval_set(path, prefix, identity)
        except Exception as exc:  # a tracking error never stops training; said once
            self._warn_once("record-eval-set", f"tokcal could not record the eval set in {path}: {exc}")

    def _evaluation_metrics(self, run: _Run, scores: DecisionScores, prefix: str, identity: dict[str, Any] | None,
                            step: int) -> DecisionMetrics | None:
        """This evaluation's metrics plus, from the second evaluation of the same eval set
        (prefix and identity) on, the flips since the previous one (``None``, with a
        warning, when they cannot be computed)."""
        s = self.settings
        try:
            metrics = scores.metrics(n_bins=s.n_bins, hist_bins=s.hist_bins, prefix=prefix)
        except Exception as exc:  # a metrics error never stops training
            self._warn_once(f"metrics:{type(exc).__name__}", f"tokcal could not compute the metrics at step {step}: {exc}")
            return None
        if not len(scores):
            return metrics
        try:
            key = (prefix, (identity or {}).get("fingerprint", ""))
            history = run.histories.get(key)
            if history is None or (history.last_step is not None and step < history.last_step):
                history = run.histories[key] = TrajectoryState()  # first evaluation, or training restarted
            flips = history.update(decision_keys(scores.sample_index), correct_from_probs(scores.probs, scores.gt),
                                   step=step)
            if history.evaluations > 1:
                metrics.scalars.update(flip_scalars(flips, prefix))
        except Exception as exc:  # the flips are extra; the evaluation is logged without them
            self._warn_once(f"flips:{type(exc).__name__}", f"tokcal could not count the flips at step {step}: {exc}")
        return metrics

    def _run(self, background: bool, fn: Any) -> None:
        """``fn`` in the background thread, or here."""
        if background:
            self._submit(fn)
        else:
            fn()

    def _log(self, run: _Run, args: TrainingArguments, state: TrainerState, scores: DecisionScores,
             metrics: DecisionMetrics, identity: dict[str, Any] | None) -> None:
        s = self.settings
        texts = self._texts(scores) if s.sample_text and (s.log_samples or s.log_per_sample) else None
        samples = self._sample_rows(scores, texts) if s.log_samples else None
        per_sample = self._per_sample(scores, texts, state.global_step) if s.log_per_sample else None
        state.log_history.append({**metrics.scalars, "epoch": state.epoch, "step": state.global_step})
        if not run.slots:
            self._open_trackers(run, args)
        step = state.global_step
        background = any(slot.background for slot in run.slots)
        if identity is not None:
            self._note_eval_set(run, metrics.prefix, identity, step, background)
        for slot in run.slots:
            # Figures and writes run in the background thread, beside training; a backend
            # that must be called from the training thread (thread_safe False: W&B) logs here.
            self._run(slot.background, lambda slot=slot: self._push(slot, metrics, step, samples, per_sample))
        self._say_evaluation(metrics, step)

    def _note_eval_set(self, run: _Run, prefix: str, identity: dict[str, Any], step: int, background: bool) -> None:
        """Record the first eval set logged under ``prefix`` in ``tokcal.json``; another one
        under the same prefix later is said once (its points join the same series)."""
        known = run.eval_sets.get(prefix)
        if known is None:
            run.eval_sets[prefix] = dict(identity)
            self._run(background, lambda: self._record_eval_set(run, prefix, dict(identity)))
        elif known.get("fingerprint") != identity.get("fingerprint") or known.get("size") != identity.get("size"):
            self._warn_once(
                f"other-eval-set:{prefix}",
                f"tokcal: the eval set evaluated at step {step} under {prefix!r} ({identity['size']} decisions) is "
                f"not the one logged under it before ({known.get('size')} decisions); its points join the same "
                f"series, and its flips are counted on their own. Evaluate it with another metric_key_prefix to "
                "keep it apart",
            )

    def _say_evaluation(self, metrics: DecisionMetrics, step: int) -> None:
        if not self.settings.verbose:
            return
        p = metrics.prefix
        v = metrics.scalars

        def num(name: str) -> str:
            x = v.get(f"{p}{name}")
            return "n/a" if x is None or x != x else f"{float(x):.3f}"

        n = int(v.get(f"{p}decision_samples", 0))
        self._say(f"tokcal {p.rstrip('_')} step {step}: mass {num('decision_prob_mass')}, accuracy "
                  f"{num('decision_accuracy')}, ECE {num('decision_ece')} ({n} decisions)")

    def _push(self, slot: _Slot, metrics: Any, step: int, samples: list[dict[str, Any]] | None,
              per_sample: PerSample | None) -> None:
        """One evaluation into one run, unless the run has this (prefix, step) already.

        The run's writer lock is held around the check and the write, so that a backfill or
        sync into the same run never makes a second point for this step; while another
        process holds it, the evaluation is held back and written once it lets go."""
        if slot.tracker is None:  # it could not be opened (warned then)
            return
        self._retry_deferred(slot, wait=0.0)
        item = (metrics, step, samples, per_sample)
        if not self._write_locked(slot, item, wait=LOCK_WAIT_S if slot.background else 0.0):
            slot.deferred.append(item)
            t = slot.tracker
            self._warn_once(f"deferred:{t.name}", f"tokcal: the {t.name} run {t.run_id} is being written by another "
                                                  "tokcal process (backfill or sync); evaluations are held back and "
                                                  "logged once it is done")

    def _retry_deferred(self, slot: _Slot, wait: float) -> None:
        """Write the evaluations held back by another process's writer lock, in step order."""
        while slot.deferred:
            if not self._write_locked(slot, slot.deferred[0], wait=wait):
                return
            slot.deferred.pop(0)

    def _write_locked(self, slot: _Slot, item: tuple[Any, ...], wait: float) -> bool:
        """Check the run's steps and write ``item`` under its writer lock; ``False`` when
        another process held the lock for ``wait`` seconds (nothing written)."""
        metrics, step, samples, per_sample = item
        t = slot.tracker
        with self._writer_lock(t, wait) as held:
            if not held:
                return False
            key = f"{metrics.prefix}decision_samples"
            # Read again right before the write (a backfill may have logged the step meanwhile);
            # a backend logged in the training thread (W&B) is not asked: only this process writes it live.
            have = self._logged_steps(t, key) if slot.background else set()
            have |= slot.steps.setdefault(key, set())
            if step in have:
                self._warn_once(f"again:{t.name}", f"tokcal: the {t.name} run already has the {metrics.prefix!r} "
                                                   f"evaluation at step {step}; not logged again (one point per step)")
                return True
            try:
                t.log_evaluation(metrics, step, samples=samples, per_sample=per_sample, scalars=self.settings.metrics)
                slot.steps[key].add(step)
            except Exception as exc:  # a tracking error never stops training
                self._warn_once(f"log:{t.name}", f"tokcal could not log evaluation at step {step} to {t.name}: {exc}")
        if slot.background:
            time.sleep(LOCK_GAP_S)  # a waiting backfill or sync gets the lock before the next write
        return True

    @contextmanager
    def _writer_lock(self, tracker: Any, wait: float) -> Iterator[bool]:
        """Hold the run's writer lock (the one backfill and sync take): ``True`` inside when
        held, ``False`` when another process held it for ``wait`` seconds. A run not created
        yet (its server was down) has none; a lock file that cannot be made is said once and
        the write goes ahead."""
        from tokcal.io import exclusive_lock

        if tracker.run_id is None:
            yield True
            return
        with ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(tracker.writer_lock(), f"{tracker.name} run {tracker.run_id}",
                                                   wait=wait))
            except TokcalError:  # another tokcal process writes this run now
                held = False
            except OSError as exc:  # no lock to be had here (read-only temp folder): write unguarded, said once
                self._warn_once("lockfile", f"tokcal could not take the writer lock of the {tracker.name} run: {exc}")
                held = True
            else:
                held = True
            yield held

    @staticmethod
    def _logged_steps(tracker: Any, key: str) -> set[int]:
        """The steps a run has for ``key`` (a resumed or re-attached run, a backfill); none
        when the backend cannot say now (its server is down)."""
        try:
            return set(tracker.logged_steps(key))
        except Exception:  # deliberate: unknown means nothing to skip; the write itself is spooled if it fails
            return set()

    def _submit(self, fn: Any) -> None:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokcal-log")
        self._pending.append(self._executor.submit(fn))

    def _wait_pending(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def flush(self) -> None:
        """Wait until every evaluation handed to the trackers has been written (an evaluation
        held back by another process's writer lock waits for it up to a minute, then is
        reported as not logged)."""
        self._wait_pending()
        for run in list(self._runs.values()):
            for slot in run.slots:
                if slot.deferred:
                    self._run(slot.background, lambda slot=slot: self._give_up_deferred(slot))
        self._wait_pending()

    def _give_up_deferred(self, slot: _Slot) -> None:
        self._retry_deferred(slot, wait=FINAL_LOCK_WAIT_S if slot.background else 0.0)
        if slot.deferred:
            t = slot.tracker
            steps = sorted({item[1] for item in slot.deferred})
            slot.deferred.clear()
            self._warn_once(f"lost:{t.name}", f"tokcal could not log steps {steps} to the {t.name} run {t.run_id}: "
                                              "another tokcal process kept writing it; rescore their checkpoints "
                                              "with tokcal backfill OUTPUT_DIR")

    def _texts(self, scores: DecisionScores) -> list[str] | None:
        """The text before each decision (``sample_text``), decoded once for both records."""
        if scores.inputs is None:
            return None
        return [self._tokenizer.decode(ids) for ids in scores.inputs]

    def _sample_rows(self, scores: DecisionScores, texts: list[str] | None) -> list[dict[str, Any]]:
        rows = scores.records()
        if texts is not None:
            for row, text in zip(rows, texts):
                row["text"] = text
        cap = self.settings.max_samples
        return rows[:cap] if cap else rows

    def _per_sample(self, scores: DecisionScores, texts: list[str] | None, step: int) -> PerSample | None:
        """The evaluation's per-sample record (``None``, with a warning, if it cannot be made)."""
        try:
            return PerSample.from_scores(scores, texts)
        except Exception as exc:  # the record is extra; the evaluation is logged without it
            self._warn_once(f"per_sample:{type(exc).__name__}",
                            f"tokcal could not keep the per-sample record at step {step}: {exc}")
            return None


def _popped_labels(shape: tuple[int, ...]) -> torch.Tensor | None:
    """The ``labels`` that the Trainer took off this eval batch before calling the model.

    With ``label_smoothing_factor > 0`` or a ``compute_loss_func`` (and a ``compute_loss``
    override that does the same), ``Trainer.compute_loss`` pops ``labels`` before the forward,
    so the model never sees them. ``Trainer.prediction_step`` grabs them first (its local
    ``labels``), ``compute_loss`` holds the popped tensor, and ``evaluation_loop`` still has
    the batch. Walk up the callers of this forward for a local ``labels`` tensor of the
    batch's (batch, seq) shape, or an ``inputs`` mapping that holds one.
    """
    frame = sys._getframe(2)  # the caller of _on_forward (the hook machinery) and up
    for _ in range(CALLER_DEPTH):
        if frame is None:
            return None
        names = frame.f_code.co_varnames
        if "labels" in names or "inputs" in names:
            found = frame.f_locals
            inputs = found.get("inputs")
            for cand in (found.get("labels"), inputs.get("labels") if isinstance(inputs, Mapping) else None):
                if isinstance(cand, torch.Tensor) and tuple(cand.shape) == shape and not cand.is_floating_point():
                    return cand
        frame = frame.f_back
    return None


def _rows(batch: Mapping[str, Any]) -> int:
    ids = batch.get("input_ids")
    return int(ids.shape[0]) if ids is not None else 0


def _run_key(args: Any) -> str:
    """The run a Trainer's event belongs to: its output folder (one ``tokcal.json`` each)."""
    return str(Path(str(getattr(args, "output_dir", None) or ".")).resolve())


def _evaluated_prefix(metrics: Mapping[str, Any]) -> str:
    """``eval_`` or ``eval_<name>_``: the ``metric_key_prefix`` the Trainer's ``evaluate``
    was called with (a local of that call, a few callers up from ``on_evaluate``; the
    Trainer prefixes every key of the evaluation with it). Read off the metrics' keys only
    when no caller has it: the prefix whose ``_runtime``, ``_samples_per_second`` and
    ``_steps_per_second`` the Trainer adds, when exactly one has all three."""
    frame = sys._getframe(1)
    for _ in range(PREFIX_DEPTH):
        if frame is None:
            break
        if "metric_key_prefix" in frame.f_code.co_varnames:
            given = frame.f_locals.get("metric_key_prefix")
            if isinstance(given, str) and given and (
                not metrics or any(str(k).startswith(f"{given}_") for k in metrics)
            ):
                return f"{given}_"
        frame = frame.f_back
    return _prefix_from_keys(metrics)


def _prefix_from_keys(metrics: Mapping[str, Any]) -> str:
    suffixes = ("_runtime", "_samples_per_second", "_steps_per_second")
    found = [str(k)[: -len(suffixes[0])] for k in metrics if str(k).endswith(suffixes[0])]
    full = [p for p in found if all(f"{p}{s}" in metrics for s in suffixes)]
    return f"{full[0]}_" if len(full) == 1 else "eval_"


def _num_samples(dataloader: Any) -> int | None:
    ds = getattr(dataloader, "dataset", None)
    try:
        return len(ds) if ds is not None else None
    except TypeError:
        return None
