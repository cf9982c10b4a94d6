"""The shipped LLaMA-Factory configs parse with LLaMA-Factory's own argument parser once tokcal's
keys are out (an unknown or misspelt key fails here, as llamafactory-cli would fail)."""

from __future__ import annotations

import json

import pytest

from tests.llamafactory.conftest import REPO, needs_llamafactory

pytestmark = needs_llamafactory
CONFIGS = sorted((REPO / "configs").glob("llamafactory_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_keys_are_llamafactorys_or_tokcals(path, monkeypatch) -> None:
    from llamafactory.hparams.parser import _parse_train_args

    from tokcal.callbacks.llamafactory import load_config, make_callback, split_config
    from tokcal.callbacks.llamafactory_data import data_args_dict

    cfg = load_config(path)
    lf_args, options = split_config(cfg)
    assert options is not None and cfg["track_decision_probs"] is True
    make_callback(options)  # the tokcal options are valid
    assert not [k for k in lf_args if k.startswith("decision_")]
    # LLaMA-Factory's HfArgumentParser, which rejects unused keys (DeepSpeed and bf16 set
    # aside: this machine has neither).
    model_args, data_args, training_args, finetuning_args, _ = _parse_train_args(data_args_dict(cfg))
    assert finetuning_args.stage == "sft" and data_args.val_size > 0
    assert training_args.eval_strategy == "steps" and not training_args.predict_with_generate


def test_reference_config_is_the_owners_setup() -> None:
    from tokcal.callbacks.llamafactory import load_config

    cfg = load_config(REPO / "configs" / "llamafactory_qwen2_5_vl_3b_full_sft_ds3.yaml")
    assert cfg["model_name_or_path"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert (cfg["finetuning_type"], cfg["template"], cfg["bf16"]) == ("full", "qwen2_vl", True)
    ds = json.loads((REPO / cfg["deepspeed"]).read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # backfill-able checkpoints
    assert cfg["eval_steps"] == cfg["save_steps"]


def test_unknown_key_still_fails_in_llamafactory() -> None:
    from llamafactory.hparams.parser import _parse_train_args

    from tokcal.callbacks.llamafactory_data import data_args_dict

    with pytest.raises(ValueError, match="not used by the HfArgumentParser"):
        _parse_train_args(data_args_dict({"stage": "sft", "model_name_or_path": "x", "output_dir": "o",
                                          "track_probs": True}))
