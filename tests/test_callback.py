"""DecisionTrackingCallback on a real (tiny) Trainer run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tokcal import DecisionTrackingCallback
from tests.helpers.models import make_tiny_checkpoint
from tests.helpers.tokenizers import small_bpe_tokenizer
from tests.helpers.training import train_tiny
from tokcal.core.spec import DecisionSpec
from tokcal.errors import TokcalError
from tokcal.jobs.extract import score_checkpoint
from tokcal.jobs.state import read_state
from tokcal.trackers.local import read_local_store

KEYS = ["eval_avg_p_accept", "eval_avg_p_reject", "eval_decision_prob_mass", "eval_decision_confidence",
        "eval_decision_accuracy", "eval_decision_ece", "eval_decision_brier", "eval_decision_nll"]


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", small_bpe_tokenizer(), seed=0)


@pytest.fixture(scope="module")
def runs(base_ckpt, tmp_path_factory):
    """The same training with and without the callback."""
    out_with = tmp_path_factory.mktemp("with")
    out_without = tmp_path_factory.mktemp("without")
    cb = DecisionTrackingCallback()  # no arguments: defaults and the Trainer's tokenizer
    t_with = train_tiny(base_ckpt, out_with, callbacks=[cb])
    t_without = train_tiny(base_ckpt, out_without)
    return t_with, t_without, out_with


def store(out: Path) -> list[dict]:
    """The local run that tokcal.json names."""
    state = read_state(out / "tokcal.json")  # the one reader: relative folders resolved
    return read_local_store(state["trackers"][0]["local_dir"])


def eval_entries(history: list[dict]) -> dict[int, dict]:
    return {h["step"]: h for h in history if "eval_loss" in h}


def test_metrics_logged_at_every_eval_step(runs):
    _, _, out = runs
    records = store(out)
    steps = [r["step"] for r in records]
    assert steps == [4, 8, 12]
    for r in records:
        assert all(k in r["scalars"] for k in KEYS)
        assert r["scalars"]["eval_decision_samples"] == 13  # odd-sized eval set, each sample once
        assert r["scalars"]["eval_decision_missing"] == 0
    assert sorted(p.name for p in (out / "tokcal").rglob("*.png"))  # diagrams were drawn


def test_state_log_history_keeps_the_scalars(runs):
    t_with, _, out = runs
    ours = [h for h in t_with.state.log_history if "eval_decision_ece" in h]
    assert [h["step"] for h in ours] == [4, 8, 12]
    saved = json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    assert any("eval_decision_ece" in h for h in saved)


def test_eval_loss_is_untouched(runs):
    t_with, t_without, _ = runs
    a, b = eval_entries(t_with.state.log_history), eval_entries(t_without.state.log_history)
    assert a.keys() == b.keys() == {4, 8, 12}
    for step in a:
        assert a[step]["eval_loss"] == b[step]["eval_loss"]


def test_numbers_equal_own_pass_on_saved_checkpoints(runs):
    """What the hook read from the Trainer's eval logits equals scoring the checkpoint."""
    _, _, out = runs
    logged = {r["step"]: r["scalars"] for r in store(out)}
    for step in (4, 8, 12):
        scores = score_checkpoint(out / f"checkpoint-{step}", out / "eval.jsonl", DecisionSpec(), progress=False)
        own = scores.metrics().scalars
        for k in KEYS:
            assert logged[step][k] == pytest.approx(own[k], abs=1e-5), (step, k)


def test_learning_moves_the_decision_mass(runs):
    _, _, out = runs
    mass = [r["scalars"]["eval_decision_prob_mass"] for r in store(out)]
    assert mass[-1] > mass[0]


def test_tokcal_json_points_at_the_run(runs):
    _, _, out = runs
    state = read_state(out / "tokcal.json")
    assert state["trackers"][0]["backend"] == "local"
    assert state["spec"]["labels"] == ["Accept", "Reject"]


def test_own_pass_scorer_gives_the_same_numbers(base_ckpt, runs, tmp_path):
    _, _, out_hook = runs
    cb = DecisionTrackingCallback(scorer="pass", backend="local")
    train_tiny(base_ckpt, tmp_path, callbacks=[cb])
    hook = {r["step"]: r["scalars"] for r in store(out_hook)}[4]
    own = store(tmp_path)[0]["scalars"]
    for k in KEYS:
        assert own[k] == pytest.approx(hook[k], abs=1e-5)


def test_bad_setup_fails_in_init():
    with pytest.raises(TokcalError, match="expected backend"):
        DecisionTrackingCallback(backend="comet")
    with pytest.raises(TokcalError, match="expected every >= 1"):
        DecisionTrackingCallback(every=0)
    with pytest.raises(TokcalError, match="unknown tracking options"):
        DecisionTrackingCallback(bins=3)


def test_every_n_and_a_broken_tracker_never_stops_training(base_ckpt, tmp_path):
    # every=2 logs evaluations 1 and 3; the local store's folder is a file, so logging fails.
    blocker = tmp_path / "blocked"
    blocker.write_text("not a folder")
    cb = DecisionTrackingCallback(every=2, local_dir=str(blocker / "store"))
    with pytest.warns(UserWarning, match="tokcal could not"):
        trainer = train_tiny(base_ckpt, tmp_path / "out", callbacks=[cb])
    assert trainer.state.global_step == 12


def test_torchrun_two_processes_count_each_sample_once(base_ckpt, tmp_path):
    """DDP on CPU (gloo), 13 eval samples over 2 ranks: the sampler pads the last batch with
    duplicates; the callback must drop them and match scoring the saved checkpoints."""
    import os
    import subprocess

    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    from tests.helpers.processes import torchrun_cmd

    cmd = torchrun_cmd("tests.scripts.ddp_callback", str(base_ckpt), str(out))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = {r["step"]: r["scalars"] for r in store(out)}
    assert sorted(logged) == [4, 8, 12]
    for step in (4, 12):
        assert logged[step]["eval_decision_samples"] == 13
        own = score_checkpoint(out / f"checkpoint-{step}", out / "eval.jsonl", DecisionSpec(), progress=False)
        for k in KEYS:
            assert logged[step][k] == pytest.approx(own.metrics().scalars[k], abs=1e-5), (step, k)


def test_per_sample_table_text_only_when_asked(base_ckpt, tmp_path):
    for text in (False, True):
        out = tmp_path / f"text{text}"
        cb = DecisionTrackingCallback(log_samples=True, sample_text=text, max_samples=5)
        train_tiny(base_ckpt, out, callbacks=[cb], max_steps=4)
        rec = store(out)[0]
        run_dir = Path(read_state(out / "tokcal.json")["trackers"][0]["local_dir"])
        rows = [json.loads(x) for x in (run_dir / rec["samples_file"]).read_text().splitlines()]
        assert len(rows) == 5
        assert {"sample_id", "p_accept", "p_reject", "gt", "pred", "correct"} <= set(rows[0])
        assert ("text" in rows[0]) is text
        if text:
            assert "Review:" in rows[0]["text"] and rows[0]["text"].endswith("\\boxed{")


def test_settings_from_the_shipped_yaml():
    root = Path(__file__).resolve().parents[1]
    cb = DecisionTrackingCallback(config=root / "configs" / "tokcal.yaml", every=3)
    assert cb.settings.every == 3 and cb.settings.n_bins == 15
    assert cb.settings.spec == DecisionSpec()
    assert DecisionSpec.from_yaml(root / "configs" / "spec.yaml") == DecisionSpec()


def test_evaluate_after_training_on_a_named_eval_set(runs):
    """trainer.evaluate() outside train(), on a dict of eval sets: the Trainer's prefix is kept."""
    t_with, _, out = runs
    t_with.evaluate(eval_dataset={"dev": t_with.eval_dataset})
    (cb,) = [c for c in t_with.callback_handler.callbacks if isinstance(c, DecisionTrackingCallback)]
    cb.flush()  # outside train() nothing waits for the background writer
    last = store(out)[-1]
    assert last["step"] == 12
    assert "eval_dev_decision_ece" in last["scalars"] and "eval_decision_ece" not in last["scalars"]
    assert any("eval_dev_avg_p_accept" in h for h in t_with.state.log_history)


def test_no_decision_in_the_answers_warns_once_with_what_it_saw(base_ckpt, tmp_path):
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from tests.helpers.training import as_dataset
    from tokcal.data.synthetic import review_records

    tok = AutoTokenizer.from_pretrained(str(base_ckpt))
    cb = DecisionTrackingCallback(DecisionSpec(labels=("Yes", "No")), backend="local")
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(str(base_ckpt)),
                      args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                             per_device_eval_batch_size=4, disable_tqdm=True),
                      eval_dataset=as_dataset(review_records(5, seed=3), tok), processing_class=tok,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True), callbacks=[cb])
    with pytest.warns(UserWarning, match=r"no decision token found .*Decision: \\\\boxed\{") as rec:
        trainer.evaluate()
        trainer.evaluate()
    assert sum("no decision token" in str(w.message) for w in rec) == 1
    assert "eval_loss" in trainer.state.log_history[-1] or "eval_loss" in trainer.state.log_history[-2]


def test_no_tokenizer_is_a_clear_error(base_ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(str(base_ckpt)),
                      args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_steps=1),
                      train_dataset=[{"input_ids": [1, 2], "labels": [1, 2]}], callbacks=[DecisionTrackingCallback()])
    with pytest.raises(TokcalError, match="needs a tokenizer"):
        trainer.train()


def test_eval_set_without_labels_warns(base_ckpt, tmp_path):
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tests.helpers.training import as_dataset
    from tokcal.data.synthetic import review_records

    tok = AutoTokenizer.from_pretrained(str(base_ckpt))
    rows = [{k: v for k, v in r.items() if k != "labels"} for r in as_dataset(review_records(4, seed=3), tok)]
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(str(base_ckpt)),
                      args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                             per_device_eval_batch_size=4, disable_tqdm=True),
                      eval_dataset=rows, processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[DecisionTrackingCallback(backend="local")])
    with pytest.warns(UserWarning, match="carry no 'labels'"):
        trainer.evaluate()
