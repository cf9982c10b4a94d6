"""LLaMA-Factory glue: ``track_decision_probs: true`` in a LLaMA-Factory training YAML.

LLaMA-Factory rejects keys its argument parser does not know ("Some keys are not used by
the HfArgumentParser"), so tokcal reads the YAML first, takes its own keys out, and calls
``llamafactory.train.tuner.run_exp(args, callbacks=[...])`` with the rest. LLaMA-Factory
then trains exactly as ``llamafactory-cli train CONFIG.yaml`` would (its loss plots,
``trainer_log.jsonl`` and ``report_to`` are untouched), with one more callback.

tokcal keys (all optional except the switch; a key that is off is never passed on):

========================  =====================================================
``track_decision_probs``  ``true`` turns tracking on (``false``: a plain run)
``decision_labels``       labels, positive first (list, or ``"Accept,Reject"``)
``decision_prefix``       text right before the label (default ``\\boxed{``)
``decision_variants``     extra surface forms per label (mapping)
``decision_lowercase``    also count lower-case labels (default ``true``)
``decision_config``       a tokcal YAML with ``spec:``/``tracking:`` sections
``decision_bins``         reliability bins (``n_bins``)
``decision_backend``      ``auto`` (follow ``report_to``), ``local``, ``mlflow``, ``wandb``, ``tensorboard``
``decision_every``        log every N-th evaluation
``decision_<option>``     any other tracking option: ``hist_bins``, ``log_per_sample``, ``log_samples``,
                          ``max_samples``, ``scorer``, ``project``, ``entity``,
                          ``tracking_uri``, ``experiment``, ``run_id``, ``local_dir``
========================  =====================================================

Launch:

    tokcal train CONFIG.yaml [key=value ...]                        # one process
    torchrun --nproc_per_node 8 -m tokcal.callbacks.llamafactory CONFIG.yaml  # DDP / DeepSpeed

The evaluation LLaMA-Factory runs after training (``do_eval`` with ``val_size``) is
logged only when it adds a step: with ``load_best_model_at_end`` or a step already
evaluated during training it repeats numbers the run has, and is skipped. tokcal logs
into the run it opened at train begin (its own run id), so with ``report_to: mlflow`` its
numbers stay in the training run even though transformers' MLflow integration puts that
final ``eval_loss`` into a second run.

tokcal's metrics steer training like the Trainer's own: ``metric_for_best_model:
eval_decision_accuracy`` (any tokcal scalar), ``load_best_model_at_end``, ``save_strategy:
best`` and LLaMA-Factory's ``early_stopping_steps`` are LLaMA-Factory keys and pass through
untouched; its EarlyStoppingCallback comes after tokcal's, so it sees the metric.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from tokcal.callbacks.decision import DecisionTrackingCallback
from tokcal.errors import TokcalError

log = logging.getLogger(__name__)

SWITCH = "track_decision_probs"
PREFIX = "decision_"
#: YAML key -> TrackingSettings field, where the name differs from ``decision_<field>``.
RENAMED = {"decision_bins": "n_bins"}
#: YAML key -> DecisionSpec field.
SPEC_KEYS = {"decision_labels": "labels", "decision_prefix": "prefix", "decision_variants": "variants",
             "decision_lowercase": "lowercase"}
CONFIG_KEY = "decision_config"
MODULE = "tokcal.callbacks.llamafactory"
PIP_HINT = "pip install -e '.[llamafactory]' in your tokcal clone"


def _settings_fields() -> set[str]:
    from tokcal.jobs.settings import TrackingSettings

    return {f.name for f in dataclasses.fields(TrackingSettings)} - {"spec"}


def tokcal_keys() -> list[str]:
    """Every YAML key that tokcal takes out of a LLaMA-Factory config."""
    keys = {SWITCH, CONFIG_KEY, *SPEC_KEYS, *RENAMED}
    keys |= {PREFIX + f for f in _settings_fields() if f != "n_bins"}
    return sorted(keys)


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise TokcalError(f"expected {key}: true or false, got {value!r}")


def split_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(llamafactory_args, tokcal_options)`` from a LLaMA-Factory config mapping.

    ``tokcal_options`` is ``None`` when ``track_decision_probs`` is absent or false; it is
    otherwise a mapping with ``spec`` (a :class:`~tokcal.core.spec.DecisionSpec` or ``None``),
    ``config`` (a tokcal YAML path or ``None``) and tracking options for
    :class:`~tokcal.callbacks.decision.DecisionTrackingCallback`.

    Raises:
        TokcalError: a ``decision_*`` key tokcal does not know (with the known ones), or
            ``decision_*`` keys without ``track_decision_probs: true``.

    Example:
        >>> lf, opts = split_config({"stage": "sft", "track_decision_probs": True, "decision_bins": 10})
        >>> lf, opts["n_bins"]
        ({'stage': 'sft'}, 10)
    """
    from tokcal.core.spec import DecisionSpec

    known = set(tokcal_keys())
    lf_args = {k: v for k, v in config.items() if k != SWITCH and not str(k).startswith(PREFIX)}
    ours = {k: v for k, v in config.items() if k == SWITCH or str(k).startswith(PREFIX)}
    unknown = sorted(set(ours) - known)
    if unknown:
        raise TokcalError(f"unknown tokcal keys {unknown} in the LLaMA-Factory config; expected some of {sorted(known)}")
    on = _as_bool(SWITCH, ours.pop(SWITCH, False))
    if not on:
        if ours:
            raise TokcalError(f"{sorted(ours)} set but {SWITCH} is not true; add '{SWITCH}: true' or remove them")
        return lf_args, None

    spec_kw: dict[str, Any] = {}
    opts: dict[str, Any] = {"config": ours.pop(CONFIG_KEY, None)}
    for key, value in ours.items():
        if key in SPEC_KEYS:
            if key == "decision_labels" and isinstance(value, str):
                value = [x.strip() for x in value.split(",") if x.strip()]
            if key == "decision_labels" and isinstance(value, (list, tuple)) and any(
                    isinstance(x, bool) for x in value):
                raise TokcalError(f"decision_labels {value} holds a YAML boolean (Yes/No/On/Off read as "
                                  "true/false); quote the labels, e.g. ['Yes', 'No']")
            if key == "decision_lowercase":
                value = _as_bool(key, value)
            spec_kw[SPEC_KEYS[key]] = value
        else:
            opts[RENAMED.get(key, key[len(PREFIX):])] = value
    if "backend" in opts and isinstance(opts["backend"], str) and "," in opts["backend"]:
        opts["backend"] = [x.strip() for x in opts["backend"].split(",") if x.strip()]
    base = None
    if opts["config"]:
        base = DecisionSpec.from_yaml(opts["config"])
    if spec_kw:
        merged = {**(base.to_dict() if base else {}), **spec_kw}
        base = DecisionSpec.from_dict(merged)
    opts["spec"] = base
    return lf_args, opts


def make_callback(options: Mapping[str, Any]) -> Any:
    """The :class:`LlamaFactoryDecisionCallback` for ``split_config``'s options."""
    opts = dict(options)
    spec, config = opts.pop("spec", None), opts.pop("config", None)
    backend = opts.pop("backend", "auto")
    return LlamaFactoryDecisionCallback(spec, config=config, backend=backend, **opts)


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a LLaMA-Factory YAML (or JSON) and apply ``key=value`` overrides, as
    ``llamafactory-cli train CONFIG.yaml key=value`` does (values parsed as YAML)."""
    import yaml

    from tokcal.config import load_json_object, load_yaml

    p = Path(path)
    data = load_json_object(p) if p.suffix == ".json" else load_yaml(p)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TokcalError(f"expected an override as key=value, got {item!r}")
        try:
            data[key.strip()] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            data[key.strip()] = value
    return data


class LlamaFactoryDecisionCallback(DecisionTrackingCallback):
    """:class:`~tokcal.callbacks.decision.DecisionTrackingCallback` plus LLaMA-Factory's final
    evaluation rule: the evaluation ``do_eval`` runs after training is logged only when it
    adds a step (see the module docstring)."""

    _train_ended = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seen_steps: set[int] = set()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._train_ended = False
        super().on_train_begin(args, state, control, **kw)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kw: Any) -> None:
        if self._train_ended and (getattr(args, "load_best_model_at_end", False)
                                  or state.global_step in self._seen_steps):
            # The same decision on every rank (args and steps are shared), so no rank gathers.
            if self.capture is not None:
                self.capture.clear()
            log.info("tokcal: the evaluation after training repeats step %d; not logged again", state.global_step)
            return
        self._seen_steps.add(state.global_step)
        super().on_evaluate(args, state, control, metrics=metrics, **kw)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        super().on_train_end(args, state, control, **kw)
        self._train_ended = True


def require_llamafactory() -> Any:
    """``llamafactory``, or a one-line error with the pip command."""
    from tokcal.errors import MissingDependencyError, require

    try:
        return require("llamafactory", "llamafactory")
    except MissingDependencyError:
        raise
    except Exception as exc:  # installed but broken (e.g. a torchvision that does not load)
        raise TokcalError(
            f"llamafactory is installed but fails to import: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
            f"see docs/llamafactory.md ({PIP_HINT})"
        ) from exc


def train(config: str | os.PathLike[str] | Mapping[str, Any], overrides: Sequence[str] = (),
          callbacks: Sequence[Any] = ()) -> Any:
    """Run LLaMA-Factory's ``run_exp`` on a config, with decision tracking when it asks.

    Args:
        config: a LLaMA-Factory YAML path, or the mapping already read.
        overrides: ``key=value`` items applied on top of the file.
        callbacks: more Trainer callbacks, placed after tokcal's (so they see its metrics).

    Returns:
        The tracking callback (``None`` when ``track_decision_probs`` is off).
    """
    data = load_config(config, overrides) if not isinstance(config, Mapping) else dict(config)
    lf_args, options = split_config(data)
    cb = make_callback(options) if options is not None else None
    require_llamafactory()
    from llamafactory.train.tuner import run_exp

    _hint_torchrun()
    try:
        # tokcal's callback first: callbacks after it (an EarlyStoppingCallback) see its
        # metrics in the evaluation's dict.
        run_exp(args=lf_args, callbacks=[*([cb] if cb is not None else []), *callbacks])
    finally:
        if cb is not None:  # after LLaMA-Factory's own do_eval/do_predict: unhook, close our trackers
            cb.close()
    return cb


def _hint_torchrun() -> None:
    if "WORLD_SIZE" in os.environ:
        return
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        return
    if n > 1:
        log.warning("tokcal train runs one process on %d GPUs; for DDP or DeepSpeed launch: "
                    "torchrun --nproc_per_node %d -m %s CONFIG.yaml", n, n, MODULE)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tokcal.callbacks.llamafactory CONFIG.yaml [key=value ...]`` (a torchrun module)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: torchrun --nproc_per_node N -m {MODULE} CONFIG.yaml [key=value ...]\n\n"
              "Trains with LLaMA-Factory; 'track_decision_probs: true' in CONFIG.yaml turns on decision tracking.")
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train(argv[0], argv[1:])
    except TokcalError as exc:
        print(f"tokcal train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
