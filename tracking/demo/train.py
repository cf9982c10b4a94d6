"""The demo's fine-tuning: the Hugging Face Trainer with tokcal's callback, logging to MLflow."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def build_start_checkpoint(train_file: Path, path: Path, cfg: Any) -> int:
    """Train the tokenizer on the training split, build the random model and save both to
    ``path`` (``checkpoint-0``, so backfill scores the untrained model too). Returns the
    number of parameters."""
    from tokcal.data.records import read_records
    from tokcal.demo.model import build_model, save_model
    from tokcal.demo.tokenizer import corpus, train_tokenizer

    tok = train_tokenizer(corpus(read_records(train_file)), vocab_size=cfg.vocab_size)
    model = build_model(tok, hidden=cfg.hidden, layers=cfg.layers, seed=cfg.seed)
    save_model(model, tok, path)
    return sum(p.numel() for p in model.parameters())


def _rows(path: Path, tokenizer: Any) -> list[dict[str, list[int]]]:
    from tokcal.data.conversation import tokenize_records
    from tokcal.data.records import read_records

    return [{"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": e.labels}
            for e in tokenize_records(read_records(path), tokenizer)]


class Progress(TrainerCallback):
    """One line per evaluation instead of the Trainer's dictionaries."""

    HEADER = "      step   loss    mass  P(Accept)  P(Reject)  accuracy   ECE    time"

    def __init__(self, out: Any) -> None:
        self.out = out
        self.t0 = time.perf_counter()
        self.loss = math.nan
        self.out(self.HEADER)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        rec = next((r for r in reversed(state.log_history) if "eval_decision_samples" in r), None)
        if rec is None or rec.get("step") != state.global_step:
            return
        g = lambda k: rec.get(k, math.nan)
        loss = "    -" if math.isnan(self.loss) else f"{self.loss:6.3f}"
        self.out(f"    {state.global_step:6d} {loss}  {g('eval_decision_prob_mass'):6.3f}  {g('eval_avg_p_accept'):9.3f}"
                 f"  {g('eval_avg_p_reject'):9.3f}  {g('eval_decision_accuracy'):8.3f}  {g('eval_decision_ece'):6.3f}"
                 f"  {time.perf_counter() - self.t0:5.0f}s")


def train(data: dict[str, Path], train_dir: Path, cfg: Any, *, tracking_uri: str, out: Any = print) -> Any:
    """Fine-tune ``train_dir/checkpoint-0``; the callback logs every evaluation (step 0
    included) into the MLflow run that the Trainer's integration opens. Returns the Trainer."""
    import transformers
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from tokcal.callbacks.decision import DecisionTrackingCallback

    start = train_dir / "checkpoint-0"
    tok = AutoTokenizer.from_pretrained(str(start))
    model = AutoModelForCausalLM.from_pretrained(str(start))
    args = TrainingArguments(
        output_dir=str(train_dir),
        run_name="tokcal-demo",
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.max_steps // 10,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        eval_on_start=True,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_only_model=True,
        logging_steps=cfg.eval_steps,
        report_to=["mlflow"],
        use_cpu=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    tracking = DecisionTrackingCallback(backend="mlflow", tracking_uri=tracking_uri)
    trainer = Trainer(
        model=model, args=args, train_dataset=_rows(data["train"], tok), eval_dataset=_rows(data["eval"], tok),
        data_collator=DataCollatorForSeq2Seq(tok, padding=True), processing_class=tok,
        callbacks=[tracking, Progress(out)],
    )
    trainer.remove_callback(PrinterCallback)
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        trainer.train()
    finally:
        transformers.logging.set_verbosity(level)
    return trainer
