"""Non-finite logits in one sample (an fp16 run gone unstable): that decision is counted in
``decision_nonfinite`` and left out, every other decision is scored and logged as usual, one
warning says how many. A real tiny model whose embedding row for a token that only one eval
record uses is inf (so that record's logits are NaN), through a real Trainer evaluation and
through ``tokcal extract``; the good decisions equal a plain full forward and softmax."""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter

import numpy as np
import pytest

from tests.helpers.models import make_tiny_checkpoint
from tests.helpers.oracle import independent_probs
from tests.helpers.tokenizers import small_bpe_tokenizer
from tests.helpers.training import as_dataset, write_records
from tokcal.core.metrics import compute_metrics
from tokcal.data.conversation import tokenize_records
from tokcal.data.synthetic import review_records

LABELS = ["Accept", "Reject"]
N = 11


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """(checkpoint, records, index of the poisoned record, oracle rows): the checkpoint's
    embedding of a token found in one record's prompt only is +inf."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = small_bpe_tokenizer()
    root = tmp_path_factory.mktemp("nonfinite")
    base = make_tiny_checkpoint(root / "base", tok, seed=3)
    recs = review_records(N, seed=41)
    examples = tokenize_records(recs, tok)
    in_record = [Counter(set(e.input_ids[: e.labels.index(next(x for x in e.labels if x != -100))]))
                 for e in examples]
    everywhere = Counter()
    for c in in_record:
        everywhere.update(c)
    special = set(tok.all_special_ids)
    bad, token = next((i, t) for i, c in enumerate(in_record) for t in sorted(c)
                      if everywhere[t] == 1 and t not in special)
    model = AutoModelForCausalLM.from_pretrained(str(base))
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("inf")
    ckpt = root / "checkpoint-7"
    model.save_pretrained(str(ckpt), safe_serialization=True)
    tok.save_pretrained(str(ckpt))
    (ckpt / "chat_template.jinja").write_text(tok.chat_template)
    oracle = independent_probs(model.eval(), tok, recs)
    assert len(oracle) == N
    assert [i for i, row in enumerate(oracle) if not (math.isfinite(row[2]) and math.isfinite(row[3]))] == [bad]
    return ckpt, recs, bad, oracle


def _truth(rec) -> int:
    from tokcal.data.records import to_messages

    answer = [m["content"] for m in to_messages(rec) if m["role"] == "assistant"][-1]
    return 0 if "{Accept}" in answer else 1


def _tokcal_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "non-finite" in str(w.message)]


def test_trainer_evaluation_logs_the_good_decisions_and_counts_the_bad(poisoned, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tokcal import DecisionTrackingCallback
    from tokcal.trackers.local import read_local_store

    ckpt, recs, bad, oracle = poisoned
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt))
    cb = DecisionTrackingCallback(backend="local", local_dir=str(tmp_path / "store"), log_samples=True)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_eval_batch_size=4, report_to="none",
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, eval_dataset=as_dataset(recs, tok),
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True), processing_class=tok, callbacks=[cb])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = trainer.evaluate()
        cb.close()
    msgs = _tokcal_warnings(caught)
    assert len(msgs) == 1 and f"1 of {N} decisions" in msgs[0], msgs
    assert not [str(w.message) for w in caught if "could not compute the metrics" in str(w.message)]

    good = [i for i in range(N) if i != bad]
    probs = np.array([[oracle[i][2], oracle[i][3]] for i in good])
    gt = np.array([_truth(recs[i]) for i in good])
    want = compute_metrics(probs, gt, LABELS, n_nonfinite=1).scalars
    assert metrics["eval_decision_nonfinite"] == 1 and metrics["eval_decision_samples"] == N - 1
    for key in ("eval_avg_p_accept", "eval_avg_p_reject", "eval_decision_accuracy", "eval_decision_ece",
                "eval_decision_nll", "eval_decision_brier", "eval_decision_prob_mass"):
        assert metrics[key] == pytest.approx(want[key], abs=1e-5), key
    logged = [h for h in trainer.state.log_history if "eval_decision_samples" in h]
    assert len(logged) == 1 and logged[0]["eval_decision_nonfinite"] == 1
    (run,) = [p for p in (tmp_path / "store").iterdir() if p.is_dir()]
    (entry,) = read_local_store(run)
    assert entry["scalars"]["eval_decision_nonfinite"] == 1
    assert entry["scalars"]["eval_decision_accuracy"] == pytest.approx(want["eval_decision_accuracy"])


def test_extract_writes_the_good_decisions_and_counts_the_bad(poisoned, tmp_path, capsys):
    from tokcal.cli.main import main

    ckpt, recs, bad, oracle = poisoned
    data = write_records(tmp_path / "eval.jsonl", recs)
    out, mfile = tmp_path / "d.jsonl", tmp_path / "m.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["extract", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(out),
                     "--metrics", str(mfile), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    msgs = _tokcal_warnings(caught)
    assert len(msgs) == 1 and f"1 of {N} decisions" in msgs[0] and str(ckpt) in msgs[0], msgs
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["sample_id"] for r in rows] == [recs[i]["id"] for i in range(N) if i != bad]
    by_id = {o[0]: o for o in oracle}
    for r in rows:
        assert r["p_accept"] == pytest.approx(by_id[r["sample_id"]][2], abs=1e-6)
        assert r["p_reject"] == pytest.approx(by_id[r["sample_id"]][3], abs=1e-6)
    scalars = json.loads(mfile.read_text())["scalars"]
    assert scalars["eval_decision_nonfinite"] == 1 and scalars["eval_decision_samples"] == N - 1


def test_backfill_logs_the_good_decisions_and_counts_the_bad(poisoned, tmp_path):
    from tokcal.jobs.backfill import backfill
    from tokcal.jobs.settings import TrackingSettings
    from tokcal.trackers import open_tracker
    from tokcal.trackers.local import read_local_store

    ckpt, recs, bad, oracle = poisoned
    data = write_records(tmp_path / "eval.jsonl", recs)
    with open_tracker("local", local_dir=tmp_path / "store") as run, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = backfill([ckpt], data, run, TrackingSettings(), output_dir=tmp_path / "files", progress=False,
                          device="cpu")
        run_dir = run.describe()["local_dir"]
    assert report.ok and [r.step for r in report.logged] == [7], report.summary()
    msgs = _tokcal_warnings(caught)
    assert len(msgs) == 1 and f"1 of {N} decisions" in msgs[0], msgs
    (entry,) = read_local_store(run_dir)
    assert entry["step"] == 7 and entry["scalars"]["eval_decision_nonfinite"] == 1
    rows = [json.loads(x) for x in (tmp_path / "files" / "checkpoint-7.decisions.jsonl").read_text().splitlines()]
    assert len(rows) == N - 1 and all(math.isfinite(r["p_accept"]) for r in rows)
    good = [i for i in range(N) if i != bad]
    probs = np.array([[oracle[i][2], oracle[i][3]] for i in good])
    want = compute_metrics(probs, np.array([_truth(recs[i]) for i in good]), LABELS, n_nonfinite=1).scalars
    assert entry["scalars"]["eval_decision_ece"] == pytest.approx(want["eval_decision_ece"], abs=1e-6)
