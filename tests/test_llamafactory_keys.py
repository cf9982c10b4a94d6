"""LLaMA-Factory glue that needs no llamafactory install: the YAML's tokcal keys, ``tokcal train
--dry-run``, and the errors of ``--llamafactory-config``. The real runs are in tests/llamafactory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tokcal.callbacks.llamafactory import (
    LlamaFactoryDecisionCallback,
    load_config,
    make_callback,
    split_config,
    tokcal_keys,
)
from tokcal.core.spec import DecisionSpec
from tokcal.errors import TokcalError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "llamafactory_tiny_cpu.yaml"


def test_split_takes_out_every_tokcal_key() -> None:
    lf, opts = split_config({
        "stage": "sft", "report_to": "mlflow", "track_decision_probs": True,
        "decision_labels": ["Yes", "No"], "decision_prefix": "Answer: ", "decision_bins": 10,
        "decision_backend": "local", "decision_every": 2, "decision_log_samples": True, "decision_hist_bins": 5,
    })
    assert lf == {"stage": "sft", "report_to": "mlflow"}
    assert opts["spec"] == DecisionSpec(labels=("Yes", "No"), prefix="Answer: ")
    cb = make_callback(opts)
    assert isinstance(cb, LlamaFactoryDecisionCallback)
    s = cb.settings
    assert (s.n_bins, s.backend, s.every, s.log_samples, s.hist_bins) == (10, "local", 2, True, 5)


def test_best_model_and_early_stopping_keys_pass_through() -> None:
    """Steering training by a tokcal metric needs nothing from tokcal's YAML handling:
    these are LLaMA-Factory / TrainingArguments keys and reach run_exp unchanged."""
    steering = {"metric_for_best_model": "eval_decision_accuracy", "greater_is_better": True,
                "load_best_model_at_end": True, "save_strategy": "best", "early_stopping_steps": 2}
    lf, opts = split_config({"stage": "sft", "track_decision_probs": True, **steering})
    assert lf == {"stage": "sft", **steering} and opts is not None


def test_off_or_absent_switch_passes_everything_else_through() -> None:
    assert split_config({"stage": "sft"}) == ({"stage": "sft"}, None)
    assert split_config({"stage": "sft", "track_decision_probs": "false"}) == ({"stage": "sft"}, None)


@pytest.mark.parametrize("cfg, match", [
    ({"track_decision_probs": True, "decision_bogus": 1}, "unknown tokcal keys"),
    ({"decision_bins": 10}, "track_decision_probs is not true"),
    ({"track_decision_probs": "maybe"}, "true or false"),
    ({"track_decision_probs": True, "decision_bins": 0}, "n_bins >= 1"),
    ({"track_decision_probs": True, "decision_backend": "neptune"}, "expected backend"),
    ({"track_decision_probs": True, "decision_labels": ["Accept"]}, "at least 2"),
])
def test_bad_tokcal_keys_are_one_line_errors(cfg, match) -> None:
    with pytest.raises(TokcalError, match=match):
        lf, opts = split_config(cfg)
        make_callback(opts)


def test_labels_as_text_backends_as_list_and_a_tokcal_yaml(tmp_path: Path) -> None:
    spec_file = tmp_path / "tokcal.yaml"
    spec_file.write_text("spec:\n  labels: [Accept, Reject]\n  variants:\n    Accept: [ACCEPT]\ntracking:\n  every: 3\n")
    _, opts = split_config({"track_decision_probs": "true", "decision_config": str(spec_file),
                            "decision_prefix": "[[", "decision_backend": "local,mlflow"})
    assert opts["spec"].variants == {"Accept": ("ACCEPT",)} and opts["spec"].prefix == "[["
    s = make_callback(opts).settings
    assert s.every == 3 and s.backend == ("local", "mlflow")
    _, opts = split_config({"track_decision_probs": True, "decision_labels": "Yes, No"})
    assert opts["spec"].labels == ("Yes", "No")


def test_every_documented_key_is_known() -> None:
    keys = set(tokcal_keys())
    assert {"track_decision_probs", "decision_labels", "decision_prefix", "decision_bins", "decision_backend",
            "decision_every", "decision_config", "decision_run_id", "decision_tracking_uri"} <= keys
    for path in (REPO / "configs").glob("llamafactory_*.yaml"):
        cfg = load_config(path)
        assert {k for k in cfg if k.startswith("decision_")} <= keys
        assert split_config(cfg)[1] is not None


def test_overrides_parse_like_llamafactory_cli(tmp_path: Path) -> None:
    cfg = load_config(TINY, ["report_to=mlflow", "max_steps=3", "decision_labels=[Good, Bad]", "output_dir=x/y"])
    assert (cfg["report_to"], cfg["max_steps"], cfg["decision_labels"], cfg["output_dir"]) == (
        "mlflow", 3, ["Good", "Bad"], "x/y")
    # YAML reads an unquoted Yes/No as booleans: refused, not turned into "True"/"False".
    with pytest.raises(TokcalError, match="quote the labels"):
        split_config(load_config(TINY, ["decision_labels=[Yes, No]"]))
    with pytest.raises(TokcalError, match="key=value"):
        load_config(TINY, ["max_steps"])
    with pytest.raises(TokcalError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_train_dry_run_shows_both_sides(capsys) -> None:
    from tokcal.cli.main import main

    assert main(["train", str(TINY), "report_to=mlflow", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["llamafactory"]["report_to"] == "mlflow"
    assert not [k for k in out["llamafactory"] if k.startswith("decision_") or k == "track_decision_probs"]
    assert out["tokcal"]["n_bins"] == 10 and out["tokcal"]["spec"]["labels"] == ["Accept", "Reject"]


@pytest.mark.skipif(importlib.util.find_spec("llamafactory") is not None, reason="llamafactory is installed")
def test_without_llamafactory_the_error_names_the_pip_command(capsys) -> None:
    from tokcal.cli.main import main

    assert main(["train", str(TINY)]) == 2
    assert "pip install -e '.[llamafactory]'" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["extract", "backfill"])
def test_data_or_llamafactory_config(cmd: str, tmp_path: Path, capsys) -> None:
    from tokcal.cli.main import main

    head = ["extract", "--checkpoint", str(tmp_path), "--output", str(tmp_path / "o.jsonl")] if cmd == "extract" \
        else ["backfill", str(tmp_path)]
    assert main([*head, "--data", "e.jsonl", "--llamafactory-config", str(TINY)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(head) == 2
    assert "--llamafactory-config" in capsys.readouterr().err
    assert main([*head, "--data", "e.jsonl", "--llamafactory-set", "a=b"]) == 2
    assert "need --llamafactory-config" in capsys.readouterr().err
    assert main([*head, "--llamafactory-config", str(tmp_path / "nope.yaml")]) == 2
    assert "config not found" in capsys.readouterr().err


def test_final_evaluation_is_skipped_only_when_it_repeats_a_step() -> None:
    from types import SimpleNamespace

    cb = make_callback(split_config({"track_decision_probs": True})[1])
    calls = []
    base = type(cb).__mro__[1]
    orig = base.on_evaluate
    try:
        base.on_evaluate = lambda self, args, state, control, metrics=None, **kw: calls.append(state.global_step)
        args = SimpleNamespace(load_best_model_at_end=False)
        cb.on_evaluate(args, SimpleNamespace(global_step=4), None)
        cb._train_ended = True
        cb.on_evaluate(args, SimpleNamespace(global_step=4), None)  # after training, step 4 again: skipped
        cb.on_evaluate(args, SimpleNamespace(global_step=6), None)  # a new step: logged
        cb.on_evaluate(SimpleNamespace(load_best_model_at_end=True), SimpleNamespace(global_step=9), None)
    finally:
        base.on_evaluate = orig
    assert calls == [4, 6]


def test_train_dry_run_hides_credentials(capsys) -> None:
    from tokcal.cli.main import main

    uri = "http://alice:s3cr3t-pw@127.0.0.1:5000/?token=tok-123"
    assert main(["train", str(TINY), "report_to=mlflow", f"decision_tracking_uri={uri}", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "s3cr3t-pw" not in printed and "tok-123" not in printed
    assert json.loads(printed)["tokcal"]["tracking_uri"].startswith("http://alice:***@127.0.0.1:5000")
