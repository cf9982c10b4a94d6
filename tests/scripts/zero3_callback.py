"""Run under torchrun with ``DS_ACCELERATOR=cpu``: a tiny Trainer run under DeepSpeed ZeRO-3
(gloo on CPU) with two callbacks, one reading the Trainer's eval logits (the forward hook) and
one scoring with its own pass, each into its own local store.

    torchrun --nproc_per_node 2 -m tests.scripts.zero3_callback BASE_CKPT OUT

The eval set (13 samples, 2 per batch, batches dealt to the ranks in turn) has a batch without
a decision on rank 1 at the first step and a batch without labels on both ranks at the second
(the Trainer gathers each step's loss, so a batch without labels on one rank only would break
the Trainer's own loop). Checkpoints hold consolidated weights
(``stage3_gather_16bit_weights_on_model_save``); after training, the model is saved once more
with that switched off, as ZeRO shards only, to ``OUT/shards/checkpoint-N``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tests.helpers.training import as_dataset, write_records
from tokcal.data.synthetic import review_records

N_EVAL = 13
EVAL_BATCH = 2
NO_DECISION = (2, 3)  # rank 1's first eval batch
UNLABELED = (4, 5, 6, 7)  # the second eval batch of both ranks
STEPS = (2, 4)  # evaluations and checkpoints


def zero3_config() -> dict[str, Any]:
    """ZeRO-3 that treats a tiny model as a large one: no parameter is kept whole on every rank
    (persistence threshold 0), and none stays gathered between forwards. With the default
    prefetch bucket (5e7 parameters) the first fetch gathers a tiny model whole and it stays
    gathered in eval, so later forwards run no collective; a model of billions of parameters
    is gathered and released layer by layer in every forward."""
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {
            "stage": 3,
            "stage3_param_persistence_threshold": 0,
            "stage3_prefetch_bucket_size": 0,
            "stage3_max_reuse_distance": 0,
            "stage3_gather_16bit_weights_on_model_save": True,  # else checkpoints hold shards only
        },
    }


def eval_records() -> list[dict[str, Any]]:
    """The eval records as ``eval.jsonl`` holds them (the unlabeled ones still have answers)."""
    recs = review_records(N_EVAL, seed=100)
    for i in NO_DECISION:
        recs[i]["messages"][-1]["content"] = "Decision: \\boxed{Unsure}"
    return recs


def main(base: Path, out: Path) -> None:
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from tokcal import DecisionTrackingCallback
    from tokcal.core.distributed import destroy_distributed

    tok = AutoTokenizer.from_pretrained(str(base))
    # The model before TrainingArguments(deepspeed=...): DeepSpeed partitions it in
    # deepspeed.initialize; built after, zero.Init would need the process group first.
    model = AutoModelForCausalLM.from_pretrained(str(base))
    out.mkdir(parents=True, exist_ok=True)
    recs = eval_records()
    write_records(out / "eval.jsonl", recs)
    eval_rows = as_dataset(recs, tok)
    for i in UNLABELED:
        del eval_rows[i]["labels"]
    args = TrainingArguments(
        output_dir=str(out), max_steps=STEPS[-1], per_device_train_batch_size=4,
        per_device_eval_batch_size=EVAL_BATCH, learning_rate=3e-3, warmup_steps=0,
        eval_strategy="steps", eval_steps=STEPS[0], save_strategy="steps", save_steps=STEPS[0],
        logging_steps=STEPS[0], report_to="none", use_cpu=True, seed=0, data_seed=0,
        dataloader_num_workers=0, disable_tqdm=True, deepspeed=zero3_config(),
        save_only_model=True,
    )
    callbacks = [
        DecisionTrackingCallback(backend="local", local_dir=str(out / "hook"), log_samples=True),
        DecisionTrackingCallback(backend="local", local_dir=str(out / "pass"), log_samples=True, scorer="pass"),
    ]
    trainer = Trainer(model=model, args=args, train_dataset=as_dataset(review_records(32, seed=0), tok),
                      eval_dataset=eval_rows, data_collator=DataCollatorForSeq2Seq(tok, padding=True),
                      processing_class=tok, callbacks=callbacks)
    trainer.train()
    # What the Trainer writes when stage3_gather_16bit_weights_on_model_save is false: config
    # and tokenizer, no weights, global_step*/ shards and zero_to_fp32.py.
    trainer.model_wrapped._config.zero_config.gather_16bit_weights_on_model_save = False
    trainer.save_model(str(out / "shards" / f"checkpoint-{STEPS[-1]}"))
    destroy_distributed()  # the Trainer leaves the group to us; exiting with it alive can abort in gloo


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
