"""A tiny real fine-tuning run with the Hugging Face Trainer, for callback and backfill tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tokcal.data.conversation import tokenize_records
from tokcal.data.synthetic import review_records


def write_records(path: Path, records: Sequence[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def as_dataset(records: Sequence[dict], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Records -> the list of dicts a Trainer takes (input_ids, attention_mask, labels)."""
    return [
        {"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": e.labels}
        for e in tokenize_records(records, tokenizer)
    ]


def train_tiny(
    checkpoint: Path,
    output_dir: Path,
    *,
    callbacks: Sequence[Any] = (),
    n_train: int = 48,
    n_eval: int = 13,
    max_steps: int = 12,
    eval_steps: int = 4,
    report_to: str | list[str] = "none",
    eval_data: Path | None = None,
    seed: int = 0,
    compute_metrics: Any = None,
    trainer_cls: Any = None,
    trainer_kwargs: dict[str, Any] | None = None,
    **args: Any,
) -> Any:
    """Fine-tune the tiny checkpoint for real; returns the Trainer. The eval records are
    written to ``output_dir/eval.jsonl`` so the checkpoints can be rescored. ``trainer_cls``
    (default ``Trainer``) and ``trainer_kwargs`` (e.g. ``compute_loss_func``) change the
    Trainer, ``compute_metrics`` goes to it; ``args`` go to ``TrainingArguments``."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint))
    output_dir.mkdir(parents=True, exist_ok=True)
    eval_recs = review_records(n_eval, seed=seed + 100)
    write_records(eval_data or output_dir / "eval.jsonl", eval_recs)
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=4,
        learning_rate=3e-3,
        warmup_steps=0,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        logging_steps=eval_steps,
        report_to=report_to,
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    settings.update(args)  # any default above can be overridden
    targs = TrainingArguments(**settings)
    trainer = (trainer_cls or Trainer)(
        model=model,
        args=targs,
        train_dataset=as_dataset(review_records(n_train, seed=seed), tok),
        eval_dataset=as_dataset(eval_recs, tok),
        data_collator=DataCollatorForSeq2Seq(tok, padding=True),
        processing_class=tok,
        callbacks=list(callbacks),
        compute_metrics=compute_metrics,
        **(trainer_kwargs or {}),
    )
    trainer.train()
    return trainer
