"""Scoring engines and generate mode with the Hugging Face engine: the model's own answers
against an independent greedy loop of full forwards, their metrics against plain loops and
torchmetrics, rows that stay with their decisions, backfill, and the errors that come before
any model loads. The vLLM engine's own tests are in tests/vllm (``make test-vllm``)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tokcal.cli.main import main
from tokcal.core.generated import GeneratedDecisions, generated_scalars, written_decision_at
from tokcal.core.scores import DecisionScores

MAX_NEW = 40


@pytest.fixture(scope="module")
def reasoning(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny model trained for real on answers that state their verdict in words before
    ``\\boxed{...}``; checkpoints at steps 40 and 120."""
    from tests.helpers.trained import train_decision_model

    return train_decision_model(tmp_path_factory.mktemp("reasoning") / "out", steps=(40, 120), n_train=320, n_eval=24,
                                hidden=64, heads=2, reasoning=True)


def _read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_generate_mode_equals_an_independent_greedy_loop(reasoning: dict, tmp_path: Path, capsys):
    from torchmetrics.functional.classification import multiclass_calibration_error
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.oracle import greedy_answer, independent_probs
    from tokcal.data.records import read_records

    ckpt = reasoning["checkpoints"][-1]
    out, met = tmp_path / "d.jsonl", tmp_path / "m.json"
    assert main(["extract", "--checkpoint", str(ckpt), "--data", str(reasoning["eval"]), "--output", str(out),
                 "--metrics", str(met), "--mode", "generate", "--max-new-tokens", str(MAX_NEW), "--quiet"]) == 0
    rows, scalars = _read(out), json.loads(met.read_text())["scalars"]
    assert json.loads(met.read_text())["scoring"] == {"engine": "hf", "mode": "generate", "max_new_tokens": MAX_NEW}
    model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    recs = read_records(reasoning["eval"])
    oracle = {sid: (pa, pr) for sid, _, pa, pr in independent_probs(model, tok, recs)}
    assert [r["sample_id"] for r in rows] == [r["id"] for r in recs]
    for rec, row in zip(recs, rows):
        assert (row["p_accept"], row["p_reject"]) == pytest.approx(oracle[rec["id"]], abs=1e-5)
        prompt = tok.apply_chat_template(rec["messages"][:-1], tokenize=False, add_generation_prompt=True)
        ref = greedy_answer(model, tok, tok(prompt, add_special_tokens=False)["input_ids"], MAX_NEW)
        assert row["gen_text"] == ref["text"], rec["id"]
        assert row["gen_written"] is (ref["probs"] is not None)
        assert (row["gen_p_accept"], row["gen_p_reject"]) == pytest.approx(ref["probs"], abs=1e-5)
        pred = "Accept" if ref["probs"][0] >= ref["probs"][1] else "Reject"
        assert row["gen_pred"] == pred and row["gen_correct"] is (pred == row["gt"])
        assert row["gen_label_written"] is (ref["text"].split("\\boxed{")[1][:6] in ("Accept", "Reject"))

    # The metrics of the model's own answers, from the rows: plain loops and torchmetrics.
    n = len(rows)
    written = [r for r in rows if r["gen_written"]]
    assert scalars["eval_decision_gen_accuracy"] == pytest.approx(sum(r["gen_correct"] for r in rows) / n)
    assert scalars["eval_decision_gen_agreement"] == pytest.approx(sum(r["gen_pred"] == r["pred"] for r in rows) / n)
    assert scalars["eval_decision_gen_missing"] == n - len(written)
    p = np.array([[r["gen_p_accept"], r["gen_p_reject"]] for r in written])
    assert scalars["eval_decision_gen_prob_mass"] == pytest.approx(p.sum(axis=1).mean())
    assert scalars["eval_avg_gen_p_accept"] == pytest.approx(p[:, 0].mean())
    q = p / p.sum(axis=1, keepdims=True)
    gt = torch.tensor([0 if r["gt"] == "Accept" else 1 for r in written])
    tm = float(multiclass_calibration_error(torch.tensor(q), gt, num_classes=2, n_bins=15, norm="l1"))
    assert scalars["eval_decision_gen_ece"] == pytest.approx(tm, abs=1e-6)  # torchmetrics bins in float32
    # The gold answer's verdict gives the decision away; the model's own answer has to find it.
    assert scalars["eval_decision_accuracy"] > scalars["eval_decision_gen_accuracy"]


def test_written_decision_is_the_first_token_after_the_prefix():
    assert written_decision_at([1, 2, 7, 8, 9, 7, 8, 3], prompt_tail=[5], anchor=[7, 8]) == 4
    assert written_decision_at([8, 9], prompt_tail=[5, 7], anchor=[7, 8]) == 1  # the prefix began in the prompt
    assert written_decision_at([1, 7, 8], prompt_tail=[], anchor=[7, 8]) is None  # nothing written after it
    assert written_decision_at([4, 5], prompt_tail=[9], anchor=[]) == 0


def _brute_force(gen: GeneratedDecisions, tf: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    n = len(gt)
    preds, acc, agree, miss = [], 0, 0, 0
    for i in range(n):
        ok = bool(gen.written[i]) and all(math.isfinite(x) for x in gen.probs[i])
        pred = int(np.argmax(gen.probs[i])) if ok else -1
        preds.append(pred)
        acc += pred == gt[i]
        agree += pred == int(np.argmax(tf[i]))
        miss += not ok
    rows = [i for i in range(n) if preds[i] >= 0]
    return {"acc": acc / n, "agree": agree / n, "miss": miss,
            "mass": sum(gen.probs[i].sum() for i in rows) / len(rows),
            "label_rate": sum(bool(gen.label_written[i]) for i in rows) / len(rows), "rows": rows}


def test_generated_metrics_against_plain_loops_and_torchmetrics():
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(3)
    n, k = 300, 3
    probs = rng.dirichlet([1, 1, 1, 0.5], size=n)[:, :k]
    written = rng.random(n) < 0.8
    probs[~written] = np.nan
    gen = GeneratedDecisions(probs, written, written & (rng.random(n) < 0.9))
    tf = rng.dirichlet([1, 1, 1, 0.3], size=n)[:, :k]
    gt = rng.integers(0, k, size=n)
    s = generated_scalars(gen, tf, gt, ["A", "B", "C"], prefix="eval_")
    ref = _brute_force(gen, tf, gt)
    assert s["eval_decision_gen_accuracy"] == pytest.approx(ref["acc"])
    assert s["eval_decision_gen_agreement"] == pytest.approx(ref["agree"])
    assert s["eval_decision_gen_missing"] == ref["miss"]
    assert s["eval_decision_gen_prob_mass"] == pytest.approx(ref["mass"])
    assert s["eval_decision_gen_label_rate"] == pytest.approx(ref["label_rate"])
    rows = ref["rows"]
    q = probs[rows] / probs[rows].sum(axis=1, keepdims=True)
    tm = float(multiclass_calibration_error(torch.tensor(q), torch.tensor(gt[rows]), num_classes=k, n_bins=15,
                                            norm="l1"))
    assert s["eval_decision_gen_ece"] == pytest.approx(tm, abs=1e-6)
    # Nothing written at all: counts, and NaN (not a made-up number) for the rest.
    none = GeneratedDecisions(np.full((4, 2), np.nan), np.zeros(4, bool), np.zeros(4, bool))
    s = generated_scalars(none, np.full((4, 2), 0.5), np.array([0, 1, 0, 1]), ["A", "B"])
    assert s["eval_decision_gen_missing"] == 4 and s["eval_decision_gen_accuracy"] == 0.0
    assert math.isnan(s["eval_decision_gen_prob_mass"]) and math.isnan(s["eval_decision_gen_ece"])


def test_generated_rows_stay_with_their_decisions():
    """Sorting, leaving out non-finite teacher-forced rows and joining shards move the
    generated rows with their decisions."""
    gen = GeneratedDecisions(np.array([[0.9, 0.1], [0.2, 0.7], [0.6, 0.3]]), np.array([True, True, True]),
                             np.array([True, False, True]), ["a", "b", "c"], np.array([3, 4, 5]))
    s = DecisionScores(["A", "B"], np.array([[0.8, 0.1], [np.nan, np.nan], [0.3, 0.6]]), np.array([0, 1, 1]),
                       np.array([2, 0, 1]), generated=gen)
    s.sample_ids = ["x", "y", "z"]
    kept = s.without_nonfinite()
    assert kept.generated.texts == ["a", "c"] and kept.nonfinite == 1
    ordered = kept.sorted()
    assert ordered.sample_index.tolist() == [1, 2] and ordered.generated.texts == ["c", "a"]
    recs = ordered.records()
    assert [(r["sample_id"], r["gen_text"], r["gen_pred"], r["gen_correct"]) for r in recs] == [
        ("y", "c", "A", False), ("z", "a", "A", True)]
    joined = DecisionScores.concat([ordered, ordered], ["A", "B"])
    assert joined.generated.texts == ["c", "a", "c", "a"] and joined.generated.lengths.tolist() == [5, 3, 5, 3]


@pytest.mark.slow
def test_backfill_in_generate_mode_logs_the_model_s_own_answers(reasoning: dict, tmp_path: Path, capsys):
    from tokcal.core.spec import DecisionSpec
    from tokcal.jobs.extract import score_checkpoint
    from tokcal.trackers.local import LocalTracker, read_local_store

    with LocalTracker(tmp_path / "runs") as tracker:
        run_id = tracker.run_id
        directory = tracker.directory
    assert main(["backfill", str(reasoning["output_dir"]), "--data", str(reasoning["eval"]), "--backend", "local",
                 "--run-id", run_id, "--local-dir", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "o"),
                 "--mode", "generate", "--max-new-tokens", str(MAX_NEW), "--quiet"]) == 0
    assert "2 logged, 0 skipped, 0 failed" in capsys.readouterr().out
    recs = {r["step"]: r for r in read_local_store(directory)}
    assert sorted(recs) == [40, 120]
    for ckpt in reasoning["checkpoints"]:
        step = int(ckpt.name.split("-")[1])
        expected = score_checkpoint(ckpt, reasoning["eval"], DecisionSpec(), mode="generate", max_new_tokens=MAX_NEW,
                                    progress=False)
        want = {k: v for k, v in expected.metrics().scalars.items() if "_gen_" in k}
        assert len(want) >= 8
        assert {k: recs[step]["scalars"][k] for k in want} == pytest.approx(want, rel=1e-12)
        assert _read(tmp_path / "o" / f"{ckpt.name}.decisions.jsonl") == json.loads(json.dumps(expected.records()))


def _err(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_engine_options_are_checked_before_any_model_loads(reasoning: dict, tmp_path: Path, capsys, monkeypatch):
    import tokcal.jobs.checkpoints as checkpoints

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(checkpoints, "load_checkpoint", no_loading)
    base = ["extract", "--checkpoint", str(reasoning["checkpoints"][0]), "--data", str(reasoning["eval"]),
            "--output", str(tmp_path / "d.jsonl"), "--quiet"]
    assert "without --engine vllm" in _err([*base, "--vllm-arg", "max_model_len=64"], capsys)
    assert "expected --vllm-arg KEY=VALUE, got 'enforce_eager'" in _err(
        [*base, "--engine", "vllm", "--vllm-arg", "enforce_eager"], capsys)
    assert "expected max_new_tokens >= 1, got 0" in _err([*base, "--mode", "generate", "--max-new-tokens", "0"], capsys)
    if importlib.util.find_spec("vllm") is None:  # the install hint, as a user without vLLM sees it
        err = _err([*base, "--engine", "vllm"], capsys)
        assert "vLLM is not installed" in err and "pip install -e '.[vllm]'" in err and "make setup-vllm" in err
    assert not (tmp_path / "d.jsonl").exists()


def test_vllm_section_of_a_tokcal_yaml(tmp_path: Path, capsys):
    """A tokcal YAML may hold vLLM's options beside its other sections: the spec and the tracking
    settings read past them, the scoring commands take them (and refuse them without vLLM)."""
    from tokcal.cli.common import engine_kwargs
    from tokcal.cli.main import build_parser
    from tokcal.core.spec import DecisionSpec
    from tokcal.jobs.settings import TrackingSettings

    cfg = tmp_path / "tokcal.yaml"
    cfg.write_text("tracking:\n  n_bins: 10\nvllm:\n  max_model_len: 4096\n  enforce_eager: true\n")
    assert DecisionSpec.from_yaml(cfg) == DecisionSpec()
    assert TrackingSettings.from_yaml(cfg).n_bins == 10
    args = build_parser().parse_args(["extract", "--checkpoint", "c", "--data", "d", "--output", "o",
                                      "--config", str(cfg), "--engine", "vllm", "--vllm-arg", "max_model_len=8192"])
    assert engine_kwargs(args)["engine_options"] == {"max_model_len": 8192, "enforce_eager": True}  # the flag wins
    args.engine = "hf"
    with pytest.raises(Exception, match="given without --engine vllm"):
        engine_kwargs(args)
    cfg.write_text("vllm: [max_model_len]\n")
    args = build_parser().parse_args(["extract", "--checkpoint", "c", "--data", "d", "--output", "o",
                                      "--config", str(cfg), "--engine", "vllm"])
    with pytest.raises(Exception, match="expected the 'vllm:' section of .* as a mapping of vLLM options, got list"):
        engine_kwargs(args)



@pytest.mark.slow
def test_generate_mode_is_plain_greedy_whatever_the_checkpoint_s_generation_config(reasoning: dict, tmp_path: Path):
    """A checkpoint whose generation config penalises repeats (as Qwen2.5's instruct models' does)
    still gets plain greedy answers, as vLLM's temperature 0 gives; the penalty would change them."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.oracle import greedy_answer
    from tokcal.core.spec import DecisionSpec
    from tokcal.data.records import read_records
    from tokcal.jobs.extract import score_checkpoint

    ckpt = tmp_path / "checkpoint-120"
    shutil.copytree(reasoning["checkpoints"][-1], ckpt)
    gen_cfg = json.loads((ckpt / "generation_config.json").read_text())
    gen_cfg.update(repetition_penalty=1.5, no_repeat_ngram_size=2)
    (ckpt / "generation_config.json").write_text(json.dumps(gen_cfg))
    rows = score_checkpoint(ckpt, reasoning["eval"], DecisionSpec(), mode="generate", max_new_tokens=MAX_NEW,
                            progress=False).records()
    model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    assert model.generation_config.repetition_penalty == 1.5  # the setting is there to be ignored
    changed = 0
    for rec, row in zip(read_records(reasoning["eval"]), rows):
        prompt = tok(tok.apply_chat_template(rec["messages"][:-1], tokenize=False, add_generation_prompt=True),
                     add_special_tokens=False, return_tensors="pt")
        ref = greedy_answer(model, tok, prompt["input_ids"][0].tolist(), MAX_NEW)
        assert row["gen_text"] == ref["text"], rec["id"]
        assert (row["gen_p_accept"], row["gen_p_reject"]) == pytest.approx(ref["probs"], abs=1e-5)
        with torch.no_grad():
            penalised = model.generate(**prompt, max_new_tokens=MAX_NEW)[0, prompt["input_ids"].shape[1]:]
        changed += tok.decode(penalised, skip_special_tokens=True) != ref["text"]
    assert changed  # with the checkpoint's own settings the answers would differ
