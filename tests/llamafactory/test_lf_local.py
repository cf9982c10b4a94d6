"""A real LLaMA-Factory run through ``tokcal train`` (report_to none -> the local store), then
``tokcal extract`` and ``tokcal backfill`` with ``--llamafactory-config`` on its checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.llamafactory.conftest import (
    CONFIG,
    close,
    lf_args,
    local_store,
    needs_llamafactory,
    tiny_overrides,
)

pytestmark = [needs_llamafactory, pytest.mark.slow]

STEPS = [4, 8]  # eval_steps 4, max_steps 8 in configs/llamafactory_tiny_cpu.yaml


@pytest.fixture(scope="module")
def run(lf_train) -> Path:
    return lf_train("local", "report_to=none", "decision_log_samples=true")


@pytest.fixture(scope="module")
def store(run: Path) -> tuple[Path, list[dict]]:
    return local_store(run)


def test_metrics_at_every_eval_step_in_local_store(run: Path, store) -> None:
    _, evals = store
    assert [e["step"] for e in evals] == STEPS  # LF's do_eval after training repeats step 8: not logged again
    for e in evals:
        s = e["scalars"]
        assert s["eval_decision_samples"] == 12  # val_size 0.2 of 60 records
        assert s["eval_decision_missing"] == 0
        assert 0 < s["eval_decision_prob_mass"] <= 1
        assert e["samples_file"]


def test_llamafactory_outputs_unchanged(run: Path) -> None:
    # LLaMA-Factory's own log and plots are as without tokcal: no decision keys in its log.
    lines = [json.loads(x) for x in (run / "trainer_log.jsonl").read_text().splitlines()]
    assert [x["current_steps"] for x in lines if "eval_loss" in x] == STEPS
    assert not any(k.startswith("eval_decision") for x in lines for k in x)
    assert (run / "training_loss.png").is_file() and (run / "training_eval_loss.png").is_file()
    assert json.loads((run / "eval_results.json").read_text())["eval_loss"] > 0
    # The Trainer's state has our scalars at the eval steps (the callback appends them).
    hist = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert sorted(x["step"] for x in hist if "eval_decision_ece" in x) == STEPS


def test_eval_set_is_llamafactorys_with_default_system_prompt(lf_tiny: Path, run: Path) -> None:
    from tokcal.callbacks.llamafactory import load_config
    from tokcal.callbacks.llamafactory_data import load_eval_set

    eval_set = load_eval_set(CONFIG, tiny_overrides(lf_tiny, run))
    assert (eval_set.name, eval_set.template, len(eval_set)) == ("validation", "qwen", 12)
    text = eval_set.tokenizer.decode(eval_set.examples[0].input_ids)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    answer = eval_set.tokenizer.decode([t for t in eval_set.examples[0].labels if t != -100])
    assert answer.startswith("Decision: \\boxed{") and answer.endswith("<|im_end|>\n")
    # The same ids as LLaMA-Factory's own get_dataset (train split tokenised too) gives the Trainer.
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    cfg = load_config(CONFIG, tiny_overrides(lf_tiny, run))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("decision_") and k != "track_decision_probs"}
    cfg["output_dir"] = str(run.parent / "get_dataset")
    model_args, data_args, training_args, _, _ = get_train_args(cfg)
    tok = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tok["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tok)
    ref = module["eval_dataset"]
    assert [list(r["input_ids"]) for r in ref] == [e.input_ids for e in eval_set.examples]
    assert [list(r["labels"]) for r in ref] == [e.labels for e in eval_set.examples]


@pytest.mark.parametrize("step", STEPS)
def test_extract_equals_callback(step: int, lf_tiny: Path, run: Path, store, tmp_path: Path) -> None:
    from tokcal.cli.main import main

    run_dir, evals = store
    logged = next(e for e in evals if e["step"] == step)
    out, metrics = tmp_path / "d.jsonl", tmp_path / "m.json"
    rc = main(["extract", "--checkpoint", str(run / f"checkpoint-{step}"), *lf_args(lf_tiny, run),
               "--output", str(out), "--metrics", str(metrics), "--bins", "10"])
    assert rc == 0
    got = json.loads(metrics.read_text())["scalars"]
    # The flips since the previous evaluation are the callback's own, from the second evaluation on.
    flips = {k for k in logged["scalars"] if k.endswith(("_flips_to_wrong", "_flips_to_right", "_forgotten"))}
    assert len(flips) == (3 if step != STEPS[0] else 0)
    assert set(got) == set(logged["scalars"]) - flips
    bad = {k: (got[k], logged["scalars"][k]) for k in got if not close(got[k], logged["scalars"][k])}
    assert not bad
    # Per sample too: the callback's samples table (log_samples) against extract's lines.
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    cb_rows = [json.loads(x) for x in (run_dir / logged["samples_file"]).read_text().splitlines()]
    assert len(rows) == len(cb_rows) == 12
    by_id = {r["sample_id"]: r for r in cb_rows}
    for r in rows:
        c = by_id[r["sample_id"]]
        assert (r["gt"], r["pred"]) == (c["gt"], c["pred"])
        assert close(r["p_accept"], c["p_accept"], 1e-7) and close(r["p_reject"], c["p_reject"], 1e-7)


def test_backfill_into_the_training_run_skips_logged_steps(lf_tiny: Path, run: Path, store, capsys) -> None:
    from tokcal.cli.main import main

    # The output folder holds the final model too (LLaMA-Factory saves it there), so name the checkpoints.
    rc = main(["backfill", str(run / "checkpoint-*"), *lf_args(lf_tiny, run), "--quiet"])
    assert rc == 0
    assert "0 logged, 2 skipped, 0 failed" in capsys.readouterr().out
    from tokcal.trackers.local import read_local_store

    assert [e["step"] for e in read_local_store(store[0])] == STEPS


def test_extract_refuses_data_and_config_together(lf_tiny: Path, run: Path, tmp_path: Path, capsys) -> None:
    from tokcal.cli.main import main

    rc = main(["extract", "--checkpoint", str(run / "checkpoint-4"), "--data", "x.jsonl", *lf_args(lf_tiny, run),
               "--output", str(tmp_path / "d.jsonl")])
    assert rc == 2
    assert "not both" in capsys.readouterr().err
