"""The callback when the Trainer takes the labels off the batch before the forward (label
smoothing, ``compute_loss_func``, a ``compute_loss`` override), when some eval batches carry
no labels, and when none do. Real Trainer runs, checked against scoring the saved checkpoints
(``tokcal extract``'s scorer) and a plain full forward and softmax."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from tokcal import DecisionTrackingCallback
from tests.helpers.models import make_tiny_checkpoint
from tests.helpers.tokenizers import small_bpe_tokenizer
from tests.helpers.training import as_dataset, train_tiny, write_records
from tokcal.core.spec import DecisionSpec
from tokcal.jobs.extract import score_checkpoint
from tokcal.jobs.state import read_state
from tokcal.trackers.local import read_local_store

pytestmark = pytest.mark.slow

KEYS = ["eval_avg_p_accept", "eval_avg_p_reject", "eval_decision_prob_mass", "eval_decision_confidence",
        "eval_decision_accuracy", "eval_decision_ece", "eval_decision_brier", "eval_decision_nll"]
N_EVAL, EVAL_BATCH = 13, 4  # 4 eval batches


@pytest.fixture(scope="module")
def base_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", small_bpe_tokenizer(), seed=0)


def shifted_ce(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """A ``compute_loss_func``: next-token cross-entropy, as the model computes it."""
    logits = outputs.logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                             ignore_index=-100, reduction="sum")
    n = num_items_in_batch if num_items_in_batch is not None else (target != -100).sum()
    return loss / n


def popping_trainer() -> type:
    """A Trainer whose ``compute_loss`` takes the labels off the batch under another name."""
    from transformers import Trainer

    class PoppingTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = inputs.pop("labels")
            outputs = model(**inputs)
            loss = shifted_ce(outputs, targets, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss

    return PoppingTrainer


class CountEvalForwards:
    """A TrainerCallback that counts the model's eval-mode forwards (the Trainer's and any own pass)."""

    def __new__(cls) -> Any:
        from transformers import TrainerCallback

        class Counter(TrainerCallback):
            n = 0

            def on_train_begin(self, args, state, control, model=None, **kw):
                def count(module, inputs, output):
                    if not module.training:
                        self.n += 1

                model.register_forward_hook(count)

        return Counter()


def local_run(out: Path) -> Path:
    return Path(read_state(out / "tokcal.json")["trackers"][0]["local_dir"])


@pytest.mark.parametrize("how", ["label_smoothing_factor", "compute_loss_func", "compute_loss override"])
def test_labels_popped_by_the_trainer_still_reach_the_hook(base_ckpt, tmp_path, how):
    kwargs: dict[str, Any] = {}
    if how == "label_smoothing_factor":
        kwargs["label_smoothing_factor"] = 0.1
    elif how == "compute_loss_func":
        kwargs["trainer_kwargs"] = {"compute_loss_func": shifted_ce}
    else:
        kwargs["trainer_cls"] = popping_trainer()
    counter = CountEvalForwards()
    cb = DecisionTrackingCallback(backend="local", log_samples=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_tiny(base_ckpt, tmp_path, callbacks=[cb, counter], max_steps=4, n_eval=N_EVAL,
                   per_device_eval_batch_size=EVAL_BATCH, **kwargs)
    assert not [w for w in caught if "tokcal" in str(w.message) or "labels" in str(w.message)]
    assert counter.n == -(-N_EVAL // EVAL_BATCH)  # the Trainer's forwards only: read by the hook, no own pass
    (rec,) = read_local_store(local_run(tmp_path))
    assert rec["step"] == 4 and rec["scalars"]["eval_decision_samples"] == N_EVAL
    want = score_checkpoint(tmp_path / "checkpoint-4", tmp_path / "eval.jsonl", DecisionSpec(),
                            progress=False).metrics().scalars
    got = rec["scalars"]
    assert not {k: (got[k], want[k]) for k in KEYS if got[k] != pytest.approx(want[k], abs=1e-5)}


def mixed_eval_set(tok: Any) -> tuple[list[dict], list[dict]]:
    """13 records; the second batch of 4 (rows 4-7) carries no labels."""
    from tokcal.data.synthetic import review_records

    recs = review_records(N_EVAL, seed=7)
    rows = as_dataset(recs, tok)
    for i in range(4, 8):
        del rows[i]["labels"]
    return recs, rows


@pytest.mark.parametrize("scorer", ["auto", "pass"])
def test_a_batch_without_labels_keeps_the_sample_ids_of_the_others(base_ckpt, tmp_path, scorer):
    """Sample ids count the unlabeled rows too; every labeled answer is scored once, as a full
    forward of it alone says."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from tests.helpers.oracle import independent_probs

    tok = AutoTokenizer.from_pretrained(str(base_ckpt))
    model = AutoModelForCausalLM.from_pretrained(str(base_ckpt))
    recs, rows = mixed_eval_set(tok)
    cb = DecisionTrackingCallback(backend="local", log_samples=True, scorer=scorer,
                                  local_dir=str(tmp_path / "store"))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                                          per_device_eval_batch_size=EVAL_BATCH, disable_tqdm=True),
                      eval_dataset=rows, processing_class=tok, data_collator=DataCollatorForSeq2Seq(tok, padding=True),
                      callbacks=[cb])
    trainer.evaluate()
    cb.flush()
    (run,) = (tmp_path / "store").iterdir()
    (rec,) = read_local_store(run)
    samples = [json.loads(x) for x in (run / rec["samples_file"]).read_text().splitlines()]
    kept = [0, 1, 2, 3, *range(8, N_EVAL)]
    assert rec["scalars"]["eval_decision_samples"] == len(kept)
    assert sorted(s["sample_id"] for s in samples) == kept
    oracle = {i: (pa, pr) for i, (_, _, pa, pr) in zip(kept, independent_probs(model.eval(), tok,
                                                                                [recs[i] for i in kept]))}
    for s in samples:
        assert s["p_accept"] == pytest.approx(oracle[s["sample_id"]][0], abs=1e-6)
        assert s["p_reject"] == pytest.approx(oracle[s["sample_id"]][1], abs=1e-6)
    write_records(tmp_path / "kept.jsonl", [recs[i] for i in kept])
    want = score_checkpoint(base_ckpt, tmp_path / "kept.jsonl", DecisionSpec(), progress=False).metrics().scalars
    assert not {k: (rec["scalars"][k], want[k]) for k in KEYS if rec["scalars"][k] != pytest.approx(want[k], abs=1e-5)}


def test_no_labels_anywhere_says_so_with_label_smoothing_too(base_ckpt, tmp_path):
    """An eval set without labels (and the Trainer popping none): the warning names the batches,
    and the own pass that checks them runs no forward."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from tokcal.data.synthetic import review_records

    tok = AutoTokenizer.from_pretrained(str(base_ckpt))
    rows = [{k: v for k, v in r.items() if k != "labels"} for r in as_dataset(review_records(8, seed=3), tok)]
    counter = CountEvalForwards()
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(str(base_ckpt)),
                      args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                             per_device_eval_batch_size=4, disable_tqdm=True,
                                             label_smoothing_factor=0.1),
                      eval_dataset=rows, processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[DecisionTrackingCallback(backend="local"), counter])
    counter.on_train_begin(trainer.args, trainer.state, trainer.control, model=trainer.model)
    with pytest.warns(UserWarning, match="the eval batches carry no 'labels'"):
        trainer.evaluate()
    assert counter.n == 2  # the Trainer's two batches; the own pass stopped at the first batch
