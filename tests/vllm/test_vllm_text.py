"""The vLLM engine on a text eval set: the same decisions and numbers as the Hugging Face engine
and as independent references (a plain full forward and softmax; a greedy loop of full
forwards), its prompts the same tokens, generate mode, and a backfill into a real MLflow server.

One engine run for the first tests (``run_engine.py`` on both checkpoints, in a subprocess: vLLM
starts processes of its own), two checkpoints for the backfill (one engine each).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vllm.conftest import ENGINE_TIMEOUT_S, REPO, VLLM_ARGS, needs_vllm, tokcal_cmd, vllm_env

pytestmark = needs_vllm

TOL = 1e-4  # probability, vLLM against transformers, both float32 on this CPU
MAX_NEW = 48


@pytest.fixture(scope="module")
def engine_run(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("vllm-run") / "run.json"
    cmd = [sys.executable, str(REPO / "tests/vllm/run_engine.py"), str(out), str(trained["eval"]),
           *map(str, trained["checkpoints"])]
    proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(), capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def _records(trained: dict) -> list[dict]:
    from tokcal.data.records import read_records

    return read_records(trained["eval"])


def test_teacher_forced_equals_the_hf_engine_and_a_full_forward(engine_run: dict, trained: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.oracle import independent_probs
    from tokcal.core.spec import DecisionSpec
    from tokcal.jobs.extract import score_checkpoint

    worst = 0.0
    for ckpt, got in zip(trained["checkpoints"], engine_run["checkpoints"]):
        hf = score_checkpoint(ckpt, trained["eval"], DecisionSpec(), progress=False).records()
        vl = got["records"]
        assert [r["sample_id"] for r in vl] == [r["sample_id"] for r in hf] and len(vl) == 40
        model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
        tok = AutoTokenizer.from_pretrained(str(ckpt))
        oracle = {sid: (pa, pr) for sid, _, pa, pr in independent_probs(model, tok, _records(trained))}
        for a, b in zip(vl, hf):
            for key in ("p_accept", "p_reject"):
                worst = max(worst, abs(a[key] - b[key]))
                assert a[key] == pytest.approx(b[key], abs=TOL), (a["sample_id"], key)
            assert (a["p_accept"], a["p_reject"]) == pytest.approx(oracle[a["sample_id"]], abs=TOL)
            assert (a["gt"], a["pred"], a["correct"]) == (b["gt"], b["pred"], b["correct"])
    print(f"max |vLLM - HF| teacher-forced: {worst:.2e}")


def test_prompts_are_the_tokens_of_the_rendered_conversation(engine_run: dict, trained: dict):
    """vLLM scored exactly the tokens a plain tokenisation of the rendered chat gives: cut after
    the decision prefix (teacher-forced), and the generation prompt (generate mode)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(trained["checkpoints"][0]))
    recs = _records(trained)
    tf, gen = [], []
    for r in recs:
        text = tok.apply_chat_template(r["messages"], tokenize=False)
        cut = text.index("\\boxed{", text.index("<|im_start|>assistant")) + len("\\boxed{")
        tf.append(tok(text[:cut], add_special_tokens=False)["input_ids"])
        prompt = tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
        gen.append(tok(prompt, add_special_tokens=False)["input_ids"])
    for got in engine_run["checkpoints"]:
        assert got["echoed"] == tf + gen


def test_generate_mode_equals_an_independent_greedy_loop(engine_run: dict, trained: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.helpers.oracle import greedy_answer
    from tokcal.core.spec import DecisionSpec
    from tokcal.jobs.extract import score_checkpoint

    recs = _records(trained)
    worst = 0.0
    for ckpt, got in zip(trained["checkpoints"], engine_run["checkpoints"]):
        model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
        tok = AutoTokenizer.from_pretrained(str(ckpt))
        hf = score_checkpoint(ckpt, trained["eval"], DecisionSpec(), mode="generate", max_new_tokens=MAX_NEW,
                              progress=False).records()
        for r, a, b in zip(recs, got["records"], hf):
            prompt = tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
            ref = greedy_answer(model, tok, tok(prompt, add_special_tokens=False)["input_ids"], MAX_NEW)
            assert a["gen_text"] == ref["text"] == b["gen_text"], r["id"]
            assert a["gen_written"] is (ref["probs"] is not None) and b["gen_written"] is a["gen_written"]
            if ref["probs"] is not None:
                vl = (a["gen_p_accept"], a["gen_p_reject"])
                assert vl == pytest.approx(ref["probs"], abs=TOL), r["id"]
                assert (b["gen_p_accept"], b["gen_p_reject"]) == pytest.approx(ref["probs"], abs=TOL), r["id"]
                worst = max(worst, *(abs(x - y) for x, y in zip(vl, ref["probs"])))
                pred = "Accept" if ref["probs"][0] >= ref["probs"][1] else "Reject"
                assert a["gen_pred"] == pred and a["gen_correct"] is (pred == r["messages"][-1]["content"][-7:-1])
        # The metrics of the model's own answers, from the records by a plain loop.
        s = got["scalars"]
        n = len(got["records"])
        assert s["eval_decision_gen_accuracy"] == pytest.approx(sum(x["gen_correct"] for x in got["records"]) / n)
        assert s["eval_decision_gen_agreement"] == pytest.approx(
            sum(x["gen_pred"] == x["pred"] for x in got["records"]) / n)
        assert s["eval_decision_gen_missing"] == sum(not x["gen_written"] for x in got["records"])
    print(f"max |vLLM - greedy loop| generated: {worst:.2e}")


def test_the_gold_text_gives_the_decision_away(engine_run: dict):
    """These answers state their verdict in words before the decision: teacher-forced accuracy
    is the gold text's, the model's own answers are only as good as its reading of the review."""
    s = engine_run["checkpoints"][-1]["scalars"]
    assert s["eval_decision_accuracy"] > s["eval_decision_gen_accuracy"]
    assert s["eval_decision_gen_agreement"] < 1.0 and s["eval_decision_gen_missing"] == 0


def test_engine_memory_returns_when_it_closes(engine_run: dict):
    for got in engine_run["checkpoints"]:
        assert got["open_children"] >= 1  # the engine runs in processes of its own
        engines = [name for name, _ in got["closed_children"] if "EngineCor" in name]
        assert not engines, got["closed_children"]  # stopped and reaped, not left to the end of the process
        assert got["closed_rss"] < 0.5 * got["open_rss"], (got["closed_rss"], got["open_rss"])
        print(f"{Path(got['checkpoint']).name}: engine start {got['start_s']:.0f} s, scoring {got['score_s']:.1f} s, "
              f"memory open {got['open_rss'] / 2**20:.0f} MiB, closed {got['closed_rss'] / 2**20:.0f} MiB")


def test_backfill_with_vllm_into_mlflow_equals_backfill_with_hf(trained: dict, mlflow_server: str, tmp_path: Path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    exp = client.create_experiment(f"vllm-backfill-{tmp_path.name}")
    runs = {}
    for engine in ("hf", "vllm"):
        runs[engine] = client.create_run(exp).info.run_id
        extra = VLLM_ARGS if engine == "vllm" else []
        cmd = tokcal_cmd("backfill", str(trained["output_dir"]), "--data", str(trained["eval"]), "--backend", "mlflow",
                         "--tracking-uri", mlflow_server, "--run-id", runs[engine], "--output-dir",
                         str(tmp_path / engine), "--engine", engine, *extra, "--mode", "generate",
                         "--max-new-tokens", str(MAX_NEW), "--quiet")
        proc = subprocess.run(cmd, cwd=REPO, env=vllm_env(), capture_output=True, text=True, timeout=ENGINE_TIMEOUT_S)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "2 logged, 0 skipped, 0 failed" in proc.stdout
    keys = ["eval_decision_prob_mass", "eval_decision_accuracy", "eval_decision_ece", "eval_avg_p_accept",
            "eval_decision_gen_accuracy", "eval_decision_gen_prob_mass", "eval_decision_gen_agreement",
            "eval_decision_gen_missing"]
    for key in keys:
        hist = {e: {m.step: m.value for m in client.get_metric_history(runs[e], key)} for e in runs}
        assert sorted(hist["vllm"]) == sorted(hist["hf"]) == [60, 150], key
        for step in (60, 150):
            assert hist["vllm"][step] == pytest.approx(hist["hf"][step], abs=TOL), (key, step)
    for engine, run_id in runs.items():  # each evaluation says which engine scored it
        bins = client.download_artifacts(run_id, "tokcal/eval/bins_step_000060.json", str(tmp_path / f"bins-{engine}"))
        tags = json.loads(Path(bins).read_text())["tags"]
        assert tags["tokcal_backfill"] == "true"
        if engine == "vllm":
            assert tags["tokcal_engine"] == "vllm" and tags["tokcal_vllm_version"].startswith("0.")
        else:
            assert "tokcal_engine" not in tags
    for step in (60, 150):
        rows = {e: [json.loads(x) for x in (tmp_path / e / f"checkpoint-{step}.decisions.jsonl").read_text().splitlines()]
                for e in runs}
        assert [r["gen_text"] for r in rows["vllm"]] == [r["gen_text"] for r in rows["hf"]]
        assert [r["pred"] for r in rows["vllm"]] == [r["pred"] for r in rows["hf"]]
