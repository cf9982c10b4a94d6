"""The callback under DeepSpeed ZeRO-3 on 2 ranks (torchrun, gloo, CPU), against single-process
scoring of the checkpoints it saved: the forward hook and the own pass, a rank whose batch has
no decision, a batch without labels, 13 eval samples over 2 ranks (the sampler pads the last
batch with duplicates). Then backfill of those checkpoints, and the message for a checkpoint
that holds ZeRO shards only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.deepspeed.conftest import needs_deepspeed, torchrun
from tests.scripts.zero3_callback import (
    N_EVAL,
    NO_DECISION,
    STEPS,
    UNLABELED,
    eval_records,
)

pytestmark = [needs_deepspeed, pytest.mark.slow]

KEYS = ["eval_avg_p_accept", "eval_avg_p_reject", "eval_decision_prob_mass", "eval_decision_confidence",
        "eval_decision_accuracy", "eval_decision_ece", "eval_decision_brier", "eval_decision_nll"]
SCORED = [i for i in range(N_EVAL) if i not in UNLABELED and i not in NO_DECISION]


def close(x: float):
    """Equal up to float32 rounding: the tiny model's probabilities are small (~1e-2), so a
    relative tolerance (the run measured < 1e-6 relative)."""
    return pytest.approx(x, rel=1e-5, abs=1e-9)


def run_folder(store: Path) -> Path:
    (run,) = [p for p in store.iterdir() if p.is_dir()]
    return run


def evaluations(store: Path) -> list[dict]:
    from tokcal.trackers.local import read_local_store

    return read_local_store(run_folder(store))


def single_process(checkpoint: Path, data: Path, keep: list[int]):
    """``tokcal extract``'s scorer on one process, narrowed to the samples at ``keep``."""
    from tokcal.core.scores import DecisionScores
    from tokcal.core.spec import DecisionSpec
    from tokcal.jobs.extract import score_checkpoint

    s = score_checkpoint(checkpoint, data, DecisionSpec(), progress=False)
    sel = np.isin(s.sample_index, keep)
    return DecisionScores(s.labels, s.probs[sel], s.gt[sel], s.sample_index[sel], s.missing)


def full_forward(checkpoint: Path) -> dict[int, tuple[float, float]]:
    """sample index -> (p_accept, p_reject) from a plain full forward and softmax per sample."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.oracle import independent_probs

    recs = eval_records()
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    ids = {r["id"]: i for i, r in enumerate(recs)}
    rows = independent_probs(model, tok, [recs[i] for i in SCORED])
    return {ids[rid]: (pa, pr) for rid, _, pa, pr in rows}


@pytest.mark.parametrize("scorer", ["hook", "pass"])
def test_each_sample_once_and_equal_to_single_process_scoring(zero3_run: Path, scorer: str) -> None:
    evals = evaluations(zero3_run / scorer)
    assert [e["step"] for e in evals] == list(STEPS)
    for e in evals:
        ckpt = zero3_run / f"checkpoint-{e['step']}"
        got = e["scalars"]
        assert got["eval_decision_samples"] == len(SCORED)  # labeled answers with a decision, once each
        assert got["eval_decision_missing"] == len(NO_DECISION)
        expected = single_process(ckpt, zero3_run / "eval.jsonl", SCORED + list(NO_DECISION))
        assert len(expected) == len(SCORED)
        want = expected.metrics().scalars
        assert not {k: (got[k], want[k]) for k in KEYS if got[k] != close(want[k])}
        rows = [json.loads(x) for x in (run_folder(zero3_run / scorer) / e["samples_file"]).read_text().splitlines()]
        assert sorted(r["sample_id"] for r in rows) == SCORED
        oracle = full_forward(ckpt)
        for r in rows:
            pa, pr = oracle[r["sample_id"]]
            assert (r["p_accept"], r["p_reject"]) == (close(pa), close(pr)), r["sample_id"]
        # The per-sample record (on by default): every scored dataset index once, gathered from both ranks.
        from tokcal.core.per_sample import PerSample

        record = PerSample.from_json((run_folder(zero3_run / scorer) / e["per_sample_file"]).read_bytes())
        assert sorted(record.index.tolist()) == SCORED and len(record) == len(SCORED) and record.ids is None
        for i, (pa, pr) in zip(record.index.tolist(), record.probs.tolist()):
            assert (pa, pr) == (close(oracle[i][0]), close(oracle[i][1])), i


def test_hook_and_own_pass_agree(zero3_run: Path) -> None:
    hook, own = evaluations(zero3_run / "hook"), evaluations(zero3_run / "pass")
    for a, b in zip(hook, own):
        assert not {k: (a["scalars"][k], b["scalars"][k]) for k in KEYS
                    if a["scalars"][k] != close(b["scalars"][k])}


def test_backfill_of_the_zero3_checkpoints_on_two_ranks(zero3_run: Path, tmp_path: Path) -> None:
    """``torchrun -m tokcal.cli.main backfill`` into a copy of the hook's run; every record of
    eval.jsonl is scored, the unlabeled ones too. That is not the eval set the training
    evaluated (its unlabeled rows had no labels), so it goes in as a series of its own
    (``--metric-prefix eval_all_``): under ``eval_`` backfill refuses it."""
    from tokcal.trackers.local import read_local_store

    store = tmp_path / "hook"
    shutil.copytree(zero3_run / "hook", store)
    run = run_folder(store)
    torchrun(["tokcal.cli.main", "backfill", str(zero3_run), "--data", str(zero3_run / "eval.jsonl"),
              "--backend", "local", "--local-dir", str(store), "--run-id", run.name, "--quiet",
              "--metric-prefix", "eval_all_", "--metrics", "all",
              "--output-dir", str(tmp_path / "decisions")], tmp_path / "backfill.log")
    backfilled = [e for e in read_local_store(run) if e.get("tags", {}).get("tokcal_backfill") == "true"]
    assert [e["step"] for e in backfilled] == list(STEPS)
    keys = [k.replace("eval_", "eval_all_", 1) for k in KEYS]
    for e in backfilled:
        want = single_process(zero3_run / f"checkpoint-{e['step']}", zero3_run / "eval.jsonl",
                              list(range(N_EVAL))).metrics(prefix="eval_all_").scalars
        assert e["scalars"]["eval_all_decision_samples"] == N_EVAL - len(NO_DECISION)
        assert not {k: (e["scalars"][k], want[k]) for k in keys if e["scalars"][k] != close(want[k])}


def test_a_checkpoint_with_shards_only_names_zero_to_fp32(zero3_run: Path, tmp_path: Path, capsys) -> None:
    from tokcal.cli.main import main

    ckpt = zero3_run / "shards" / f"checkpoint-{STEPS[-1]}"
    assert (ckpt / "zero_to_fp32.py").is_file() and list(ckpt.glob("global_step*/*zero*"))
    assert not list(ckpt.glob("*.safetensors"))
    out = tmp_path / "d.jsonl"
    rc = main(["extract", "--checkpoint", str(ckpt), "--data", str(zero3_run / "eval.jsonl"), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert f"{ckpt}/zero_to_fp32.py" in err and "ZeRO shards" in err
    assert len(err.strip().splitlines()) == 1
