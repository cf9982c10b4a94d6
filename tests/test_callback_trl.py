"""DecisionTrackingCallback with TRL's SFTTrainer (prompt/completion conversations)."""

from __future__ import annotations

from pathlib import Path

import pytest

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from tokcal import DecisionTrackingCallback  # noqa: E402
from tests.helpers.models import make_tiny_checkpoint  # noqa: E402
from tests.helpers.tokenizers import small_bpe_tokenizer  # noqa: E402
from tokcal.core.scoring import score  # noqa: E402
from tokcal.data.synthetic import review_records  # noqa: E402
from tokcal.jobs.state import read_state  # noqa: E402
from tokcal.trackers.local import read_local_store  # noqa: E402


def prompt_completion(records: list[dict]) -> "datasets.Dataset":
    rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records]
    return datasets.Dataset.from_list(rows)


def test_sft_trainer(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = make_tiny_checkpoint(tmp_path / "base", small_bpe_tokenizer(), seed=0)
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(ckpt))
    cfg = trl.SFTConfig(output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=8,
                        per_device_eval_batch_size=4, eval_strategy="steps", eval_steps=4, save_strategy="no",
                        learning_rate=3e-3, report_to="none", use_cpu=True, disable_tqdm=True, logging_steps=4)
    trainer = trl.SFTTrainer(model=model, args=cfg, train_dataset=prompt_completion(review_records(48, seed=0)),
                             eval_dataset=prompt_completion(review_records(11, seed=5)), processing_class=tok,
                             callbacks=[cb := DecisionTrackingCallback()])
    trainer.train()
    state = read_state(tmp_path / "out" / "tokcal.json")
    logged = read_local_store(state["trackers"][0]["local_dir"])
    assert [r["step"] for r in logged] == [4, 8]
    last = logged[-1]["scalars"]
    assert last["eval_decision_samples"] == 11 and last["eval_decision_missing"] == 0
    # An own pass over TRL's eval batches with the final model gives the same numbers.
    own = score(trainer.model, trainer.get_eval_dataloader(), cb.resolved).metrics().scalars
    for k in ("eval_avg_p_accept", "eval_decision_prob_mass", "eval_decision_accuracy", "eval_decision_ece"):
        assert last[k] == pytest.approx(own[k], abs=1e-5), k
