"""`tokcal extract` on a tiny Qwen2 with the real Qwen2.5 vocabulary, checked against a
plain full forward and softmax at the answer position, plus its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.models import make_tiny_checkpoint
from tests.helpers.oracle import independent_probs
from tests.helpers.tokenizers import qwen25_tokenizer, small_bpe_tokenizer
from tokcal.cli.main import main

REVIEWS = [
    "The method is novel and the experiments are thorough.",
    "Weak baselines, unclear writing.",
    "Solid.",
    "The proofs have a gap in Lemma 3 that the authors do not address, and the experiments "
    "use a single seed on a single data set, which makes the claims hard to believe.",
    "Good paper overall.",
]


def make_records() -> list[dict]:
    """Every supported record shape, several lengths, a lower-case variant, a multi-turn
    conversation with two decisions, and one answer without a decision."""
    recs: list[dict] = []
    for i, text in enumerate(REVIEWS):
        label = "Accept" if i % 2 == 0 else "Reject"
        recs.append({"id": f"m{i}", "messages": [
            {"role": "system", "content": "You review papers."},
            {"role": "user", "content": f"Review: {text}"},
            {"role": "assistant", "content": f"Reasoning done. \\boxed{{{label}}}"},
        ]})
    recs.append({"id": "alpaca", "instruction": "Decide.", "input": REVIEWS[0], "output": "\\boxed{accept}"})
    recs.append({"id": "sharegpt", "conversations": [
        {"from": "human", "value": REVIEWS[1]}, {"from": "gpt", "value": "So: \\boxed{Reject}"}]})
    recs.append({"id": "multi", "messages": [
        {"role": "user", "content": REVIEWS[2]}, {"role": "assistant", "content": "\\boxed{Reject}"},
        {"role": "user", "content": "Reconsider."}, {"role": "assistant", "content": "Fine, \\boxed{Accept}"}]})
    recs.append({"id": "nodecision", "messages": [
        {"role": "user", "content": REVIEWS[4]}, {"role": "assistant", "content": "I cannot decide."}]})
    return recs


def write_jsonl(path: Path, recs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def qwen_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("qwen") / "ckpt", qwen25_tokenizer(), seed=3)


def test_extract_matches_full_forward_on_real_qwen_vocab(qwen_ckpt, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recs = make_records()
    data = write_jsonl(tmp_path / "eval.jsonl", recs)
    out, met = tmp_path / "dec.jsonl", tmp_path / "metrics.json"
    # A small token budget forces several padded batches.
    rc = main(["extract", "--checkpoint", str(qwen_ckpt), "--data", str(data), "--output", str(out),
               "--metrics", str(met), "--max-tokens", "256"])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(str(qwen_ckpt)).eval()
    tok = AutoTokenizer.from_pretrained(str(qwen_ckpt))
    expected = independent_probs(model, tok, recs)
    assert len(rows) == len(expected) == len(recs) - 1 + 1  # multi has 2, nodecision has 0
    for row, (sid, turn, pa, pr) in zip(rows, expected):
        assert row["sample_id"] == sid
        assert row.get("turn", 0) == turn
        assert row["p_accept"] == pytest.approx(pa, abs=1e-5, rel=1e-5)
        assert row["p_reject"] == pytest.approx(pr, abs=1e-5, rel=1e-5)
        assert row["mass"] == pytest.approx(pa + pr, abs=1e-5, rel=1e-5)
        assert row["pred"] == ("Accept" if pa >= pr else "Reject")
    gts = [r["gt"] for r in rows]
    assert gts == ["Accept", "Reject", "Accept", "Reject", "Accept", "Accept", "Reject", "Reject", "Accept"]
    m = json.loads(met.read_text())["scalars"]
    assert m["eval_decision_samples"] == 9 and m["eval_decision_missing"] == 1
    assert m["eval_avg_p_accept"] == pytest.approx(np.mean([e[2] for e in expected]), rel=1e-5)
    assert "eval_decision_ece" in capsys.readouterr().out


def test_logits_are_computed_at_answer_positions_only(qwen_ckpt):
    """The scorer asks the model for D rows of logits, never batch x seq x vocab."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokcal.core.scoring import score
    from tokcal.core.spec import DecisionSpec
    from tokcal.data.batches import make_batches
    from tokcal.data.conversation import tokenize_records

    model = AutoModelForCausalLM.from_pretrained(str(qwen_ckpt)).eval()
    tok = AutoTokenizer.from_pretrained(str(qwen_ckpt))
    shapes: list[tuple[int, ...]] = []
    model.lm_head.register_forward_hook(lambda m, a, o: shapes.append(tuple(o.shape)))
    examples = tokenize_records(make_records(), tok)
    scores = score(model, make_batches(examples, tok.pad_token_id), DecisionSpec().resolve(tok))
    assert len(scores) == 9
    assert sum(s[0] for s in shapes) == 9  # one logits row per decision
    assert all(len(s) == 2 for s in shapes)


def test_small_bpe_checkpoint_and_multi_label_spec(tmp_path):
    tok = small_bpe_tokenizer()
    ckpt = make_tiny_checkpoint(tmp_path / "bpe", tok, seed=1)
    recs = [{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": f"\\boxed{{{lab}}}"}]}
            for lab in ["Accept", "Reject", "Accept"]]
    data = write_jsonl(tmp_path / "d.jsonl", recs)
    out = tmp_path / "o.jsonl"
    assert main(["extract", "--checkpoint", str(ckpt), "--data", str(data), "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["gt"] for r in rows] == ["Accept", "Reject", "Accept"]
    assert all(0 < r["mass"] <= 1 for r in rows)


# ------------------------------------------------------------------------- bad input


def run_err(args: list[str], capsys) -> str:
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("tokcal extract: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_errors_are_one_line_and_write_nothing(qwen_ckpt, tmp_path, capsys):
    good = write_jsonl(tmp_path / "ok.jsonl", make_records()[:2])
    out = tmp_path / "out.jsonl"
    base = ["extract", "--output", str(out)]

    assert "checkpoint not found" in run_err(base + ["--checkpoint", str(tmp_path / "nope"), "--data", str(good)], capsys)

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (corrupt / f).write_bytes((qwen_ckpt / f).read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    assert "could not load the model" in run_err(base + ["--checkpoint", str(corrupt), "--data", str(good)], capsys)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"")
    assert "--allow-pickle" in run_err(base + ["--checkpoint", str(pickled), "--data", str(good)], capsys)

    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps(make_records()[0]) + "\n{not json\n")
    assert "line 2" in run_err(base + ["--checkpoint", str(qwen_ckpt), "--data", str(bad_line)], capsys)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty" in run_err(base + ["--checkpoint", str(qwen_ckpt), "--data", str(empty)], capsys)

    no_answer = write_jsonl(tmp_path / "noans.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    assert "no assistant answer" in run_err(base + ["--checkpoint", str(qwen_ckpt), "--data", str(no_answer)], capsys)

    collide = run_err(base + ["--checkpoint", str(qwen_ckpt), "--data", str(good), "--labels", "Accept", "accept"], capsys)
    assert "'Accept'" in collide and "'accept'" in collide

    assert "n_bins" in run_err(base + ["--checkpoint", str(qwen_ckpt), "--data", str(good), "--bins", "0"], capsys)
    assert not out.exists()


def test_labels_the_answers_do_not_use_fail_with_the_callbacks_message(tiny_bpe_checkpoint, tmp_path):
    """`--labels Yes No` on Accept/Reject answers: exit 2 with the training callback's own
    message (the tokens expected, an answer quoted), no output file, and no warning that
    blames multi-token labels."""
    import subprocess
    import sys
    import warnings

    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from tests.helpers.training import as_dataset
    from tokcal import DecisionSpec, DecisionTrackingCallback
    from tokcal.data.synthetic import review_records

    records = review_records(5, seed=3)
    data = write_jsonl(tmp_path / "eval.jsonl", records)
    tok = AutoTokenizer.from_pretrained(str(tiny_bpe_checkpoint))
    cb = DecisionTrackingCallback(DecisionSpec(labels=("Yes", "No")), backend="local")
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(str(tiny_bpe_checkpoint)),
                      args=TrainingArguments(output_dir=str(tmp_path / "train"), report_to="none", use_cpu=True,
                                             per_device_eval_batch_size=4, disable_tqdm=True),
                      eval_dataset=as_dataset(records, tok), processing_class=tok,
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True), callbacks=[cb])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.evaluate()
    cb.close()
    [live] = [str(w.message) for w in caught if "no decision token" in str(w.message)]
    said = live.split(" Check labels")[0]  # the rest says how to fix it in the spec
    assert "an answer reads '" in said and ("\\boxed{Accept}" in said or "\\boxed{Reject}" in said)

    out = tmp_path / "decisions.jsonl"
    proc = subprocess.run([sys.executable, "-m", "tokcal", "extract", "--checkpoint", str(tiny_bpe_checkpoint),
                           "--data", str(data), "--output", str(out), "--labels", "Yes", "No", "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()  # one line, nothing else
    assert line.startswith("tokcal extract: error: " + said), (line, said)
    assert "--labels" in line and "--prefix" in line
    assert "several tokens" not in proc.stderr and not out.exists()
