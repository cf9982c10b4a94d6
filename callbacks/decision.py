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
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from transformers import (
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from tokcal.core.capture import DecisionCapture
from tokcal.core.distributed import all_gather
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

@dataclass
class _Slot:
    """One backend the callback logs to: its tracker once opened (``None`` before, or when
    opening failed), and the (prefix) -> steps that its run already has."""

    name: str
    background: bool  # opened and logged in the background thread
    tracker: Any = None
    steps: dict[str, set[int]] = field(default_factory=dict)


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
            `project`, `entity`, `tracking_uri`, `run_id`, `local_dir`.

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
        self.trackers: list[Any] = []
        self._hook: Any = None
        self._model: Any = None
        self._no_logits = False
        self._evals = 0
        self._warned: set[str] = set()
        self._executor: Any = None
        self._pending: list[Any] = []
        self._histories: dict[str, TrajectoryState] = {}  # per eval-set prefix: per-sample correctness so far
        self._slots: list[_Slot] = []
        self._training = False  # between train begin and train end: an exit now means training failed
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
        if model is not None and self._model is not model:
            self._detach()
            self._model = model
            if self.settings.scorer != "pass":
                self._hook = model.register_forward_hook(self._on_forward, with_kwargs=True)

    def _detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

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

    # -- events ------------------------------------------------------------------------
    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if kw.get("processing_class") is not None or self.resolved is not None:
            self._attach(kw.get("model"), kw.get("processing_class"))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._attach(kw.get("model"), kw.get("processing_class"))
        if state.is_world_process_zero:
            self._open_trackers(args, training=True)

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
        prefix = _metric_prefix(metrics or {})
        dataloader = kw.get("eval_dataloader")
        num_samples = _num_samples(dataloader)
        if self._needs_own_pass(dataloader):
            if self.settings.scorer == "hook":
                self._warn_hook_only()
            else:
                self._own_pass(kw.get("model"), dataloader)
        scores = self.capture.gather(num_samples)  # every rank joins
        unlabeled = self.capture.unlabeled_batches
        first_miss = self.capture.first_miss
        self.capture.clear()
        self._no_logits = False
        self._evals += 1
        if unlabeled and not len(scores):
            if state.is_world_process_zero:
                self._warn_once("nolabels", "the eval batches carry no 'labels', so tokcal cannot find the answers; "
                                            "keep 'labels' in the eval dataset and let the data collator pass them on")
            return
        # Every rank holds the same gathered decisions and computes the same numbers: the
        # Trainer picks the best checkpoint (metric_for_best_model) and EarlyStoppingCallback
        # decides on every process, from this dict. The Trainer has logged it already, so
        # nothing is logged twice; keys it has are left alone.
        decision = self._evaluation_metrics(scores, prefix, state.global_step)
        if decision is not None and metrics is not None:
            for key, value in decision.scalars.items():
                metrics.setdefault(key, value)
        if not state.is_world_process_zero or (self._evals - 1) % self.settings.every:
            return
        if scores.missing and not len(scores):
            self._warn_missing(first_miss)
        if decision is None:
            return
        try:
            self._log(args, state, scores, decision)
        except Exception as exc:  # a tracking error never stops training
            self._warn_once(f"log:{type(exc).__name__}", f"tokcal could not log evaluation at step "
                                                          f"{state.global_step}: {exc}")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.flush()
        self._training = False  # the runs stay open for a later evaluate(); close() or exit ends them

    def close(self, failed: bool | None = None) -> None:
        """Wait for pending logging, remove the forward hook, end the runs tokcal opened.

        Args:
            failed: end them as FAILED (MLflow status, W&B exit code 1). By default they
                are FAILED when training began and did not reach its end (an exception),
                else FINISHED. A run tokcal only attached to (the Trainer's) stays as it is.

        The callback also calls this at interpreter exit when nobody did.
        """
        self.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._detach()
        failed = self._training if failed is None else failed
        for t in self.trackers:
            try:
                t.close_failed() if failed else t.close()
            except Exception as exc:  # closing is best effort; say what failed
                self._warn_once(f"close:{t.name}", f"tokcal could not close the {t.name} tracker: {exc}")
        self.trackers.clear()
        self._slots.clear()
        self._training = False
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None

    # -- work --------------------------------------------------------------------------
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
        seen = self._tokenizer.decode(first_miss) if first_miss else ""
        expected = [self._tokenizer.convert_ids_to_tokens(list(ids)) for ids in self.resolved.token_ids]
        self._warn_once(
            "missing",
            f"no decision token found in the eval answers: expected one of {expected} after "
            f"{self.resolved.spec.prefix!r}; an answer reads {seen!r}. Check labels/prefix in the spec.",
        )

    def _open_trackers(self, args: TrainingArguments, training: bool = False) -> None:
        """Open every backend's run and write ``tokcal.json``, off the training thread where
        the backend allows it (W&B is opened here: it is not thread-safe, and works offline).

        A remote server that does not answer gives a tracker that spools the run's creation
        and every evaluation for ``tokcal sync`` (one warning); MLflow calls are bounded.
        """
        self._training = self._training or training
        if self._slots:
            return
        from tokcal.trackers.base import backend_class

        names = self.settings.backends_for(getattr(args, "report_to", None))
        local_dir = self.settings.local_dir or str(Path(args.output_dir) / "tokcal")
        run_name = getattr(args, "run_name", None)
        background = self.settings.background_logging
        self._slots = [_Slot(name, background and backend_class(name).thread_safe) for name in names]
        for slot in self._slots:
            kwargs = self.settings.tracker_kwargs(slot.name, local_dir=local_dir, run_name=run_name)
            kwargs.update(backend_class(slot.name).caller_context(kwargs))  # e.g. the Trainer's active MLflow run
            self._run(slot.background, lambda slot=slot, kwargs=kwargs: self._open_slot(slot, kwargs))
        # After every open (the background thread runs its work in order).
        self._run(any(s.background for s in self._slots), lambda: self._write_state(args.output_dir))
        if self._exit_hook is None:
            self._exit_hook = lambda ref=weakref.ref(self): _close_at_exit(ref)
            atexit.register(self._exit_hook)

    def _open_slot(self, slot: _Slot, kwargs: dict[str, Any]) -> None:
        from tokcal.trackers import open_tracker

        try:
            t = open_tracker(slot.name, **kwargs)
            t.log_config({"tokcal": self.settings.to_dict()})
        except Exception as exc:  # a tracking error never stops training
            self._warn_once(f"open:{slot.name}", f"tokcal could not open the {slot.name} tracker: {exc}")
            return
        slot.tracker = t
        self.trackers.append(t)

    def _write_state(self, output_dir: str) -> None:
        from tokcal.jobs.state import STATE_FILE, write_state

        try:
            write_state(output_dir, [t.describe() for t in self.trackers], self.settings)
        except OSError as exc:
            self._warn_once("state", f"tokcal could not write {STATE_FILE}: {exc}")

    def _evaluation_metrics(self, scores: DecisionScores, prefix: str, step: int) -> DecisionMetrics | None:
        """This evaluation's metrics plus, from the second evaluation of an eval set on, the
        flips since the previous one (``None``, with a warning, when they cannot be computed)."""
        s = self.settings
        try:
            metrics = scores.metrics(n_bins=s.n_bins, hist_bins=s.hist_bins, prefix=prefix)
        except Exception as exc:  # a metrics error never stops training
            self._warn_once(f"metrics:{type(exc).__name__}", f"tokcal could not compute the metrics at step {step}: {exc}")
            return None
        if not len(scores):
            return metrics
        try:
            history = self._histories.get(prefix)
            if history is None or (history.last_step is not None and step < history.last_step):
                history = self._histories[prefix] = TrajectoryState()  # first evaluation, or training restarted
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

    def _log(self, args: TrainingArguments, state: TrainerState, scores: DecisionScores,
             metrics: DecisionMetrics) -> None:
        s = self.settings
        texts = self._texts(scores) if s.sample_text and (s.log_samples or s.log_per_sample) else None
        samples = self._sample_rows(scores, texts) if s.log_samples else None
        per_sample = self._per_sample(scores, texts, state.global_step) if s.log_per_sample else None
        state.log_history.append({**metrics.scalars, "epoch": state.epoch, "step": state.global_step})
        if not self._slots:
            self._open_trackers(args)
        step = state.global_step
        for slot in self._slots:
            # Figures and writes run in the background thread, beside training; a backend
            # that must be called from the training thread (thread_safe False: W&B) logs here.
            self._run(slot.background, lambda slot=slot: self._push(slot, metrics, step, samples, per_sample))

    def _push(self, slot: _Slot, metrics: Any, step: int, samples: list[dict[str, Any]] | None,
              per_sample: PerSample | None) -> None:
        """One evaluation into one run, unless the run has this (prefix, step) already."""
        t = slot.tracker
        if t is None:  # it could not be opened (warned then)
            return
        key = f"{metrics.prefix}decision_samples"
        if key not in slot.steps:
            slot.steps[key] = self._logged_steps(t, key) if slot.background else set()
        if step in slot.steps[key]:
            self._warn_once(f"again:{t.name}", f"tokcal: the {t.name} run already has the {metrics.prefix!r} "
                                               f"evaluation at step {step}; not logged again (one point per step)")
            return
        try:
            t.log_evaluation(metrics, step, samples=samples, per_sample=per_sample, scalars=self.settings.metrics)
            slot.steps[key].add(step)
        except Exception as exc:  # a tracking error never stops training
            self._warn_once(f"log:{t.name}", f"tokcal could not log evaluation at step {step} to {t.name}: {exc}")

    @staticmethod
    def _logged_steps(tracker: Any, key: str) -> set[int]:
        """The steps a run has for ``key`` (a resumed or re-attached run); none when the
        backend cannot say now (its server is down)."""
        try:
            return set(tracker.logged_steps(key))
        except Exception:  # deliberate: unknown means nothing to skip; the write itself is spooled if it fails
            return set()

    def _submit(self, fn: Any) -> None:
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokcal-log")
        self._pending.append(self._executor.submit(fn))

    def flush(self) -> None:
        """Wait until every evaluation handed to the trackers has been written."""
        while self._pending:
            self._pending.pop(0).result()

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


def _metric_prefix(metrics: dict[str, Any]) -> str:
    """``eval_`` or ``eval_<name>_``, read off the Trainer's own metric keys."""
    for suffix in ("_runtime", "_loss", "_samples_per_second"):
        for k in metrics:
            if k.endswith(suffix):
                return k[: -len(suffix)] + "_"
    return "eval_"


def _num_samples(dataloader: Any) -> int | None:
    ds = getattr(dataloader, "dataset", None)
    try:
        return len(ds) if ds is not None else None
    except TypeError:
        return None
