"""The Hugging Face Trainer on your own JSONL, tracked into MLflow, then backfill and report.

What it shows, in the order you would do it with your own data:

1. Read ``messages`` records from JSONL (``--data-dir`` with ``train.jsonl``, ``eval.jsonl``
   and a second eval set ``holdout.jsonl``; without it, small synthetic ones are written).
2. Tokenise them with the chat template and **mask the prompt**: ``labels`` are -100 on
   the system and user turns and on the assistant's header, so the loss (and tokcal) only
   see the answer ``Decision: \\boxed{Accept}``.
3. Train with the ``Trainer`` and ``DecisionTrackingCallback()``: ``report_to=["mlflow"]``
   with a sqlite store (``MLFLOW_TRACKING_URI=sqlite:///.../mlflow.db``), so tokcal logs into
   the Trainer's own MLflow run at every evaluation.
4. ``tokcal backfill`` scores every saved checkpoint on the second eval set and logs it into
   the same run under its own names (``--metric-prefix eval_holdout_``).
5. ``tokcal report`` draws both series into one HTML page.

Run (a few minutes on a laptop CPU; no model hub: a tiny random model is built first unless
``--model`` points at yours):

    python examples/trainer_jsonl.py                        # everything under examples-out/trainer_jsonl
    python examples/trainer_jsonl.py --data-dir my_data --model my_model --steps 200
    mlflow ui --backend-store-uri sqlite:///examples-out/trainer_jsonl/mlflow.db   # then http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HOLDOUT_PREFIX = "eval_holdout_"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def encode(record: dict[str, Any], tokenizer: Any) -> dict[str, list[int]]:
    """One conversation as the model sees it, with the prompt masked out of the labels.

    The prompt is everything up to and including ``<|im_start|>assistant\\n`` (the chat
    template with ``add_generation_prompt=True``); the labels are -100 there and the token
    ids on the answer.
    """
    messages = record["messages"]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if ids[:len(prompt_ids)] != prompt_ids:
        raise SystemExit(f"expected the prompt's tokens to start the conversation's tokens in record "
                         f"{record.get('id')!r}; check the chat template")
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def run(cmd: list[str]) -> None:
    """Run a tokcal command as you would in a shell (printed first)."""
    print("$ tokcal " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "tokcal", *cmd], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Run")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("examples-out/trainer_jsonl"), help="output folder")
    ap.add_argument("--data-dir", type=Path, help="train.jsonl, eval.jsonl, holdout.jsonl (default: synthetic)")
    ap.add_argument("--model", type=Path, help="a causal LM folder (default: a tiny random one built here)")
    ap.add_argument("--train", type=int, default=400, help="synthetic training records (default: 400)")
    ap.add_argument("--eval", type=int, default=64, help="synthetic eval records, each set (default: 64)")
    ap.add_argument("--steps", type=int, default=120, help="training steps (default: 120)")
    ap.add_argument("--eval-steps", type=int, default=30, help="evaluate and save every N steps (default: 30)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    a = ap.parse_args()

    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from tokcal import DecisionTrackingCallback

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if a.data_dir is None:
        from sample_data import write_reviews

        data = write_reviews(work / "data", a.train, a.eval, a.eval)
    else:
        data = {name: a.data_dir / f"{name}.jsonl" for name in ("train", "eval", "holdout")}
    if a.model is None:
        from make_tiny_model import build_text_model

        a.model = build_text_model(work / "tiny-model", [data["train"]])
        print(f"built a tiny random model in {a.model}")

    # MLflow: a sqlite file in the output folder. The Trainer's MLflow integration opens the
    # run; tokcal logs into that run (its default backend follows report_to).
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "tokcal-examples")

    tokenizer = AutoTokenizer.from_pretrained(str(a.model))
    model = AutoModelForCausalLM.from_pretrained(str(a.model))
    train_set = [encode(r, tokenizer) for r in read_jsonl(data["train"])]
    eval_set = [encode(r, tokenizer) for r in read_jsonl(data["eval"])]

    args = TrainingArguments(
        output_dir=str(work / "out"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=32, learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=a.steps // 10,
        eval_strategy="steps", eval_steps=a.eval_steps, save_strategy="steps", save_steps=a.eval_steps,
        save_only_model=True, logging_steps=a.eval_steps, report_to=["mlflow"], run_name="trainer-jsonl",
        use_cpu=not torch.cuda.is_available(), seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),  # pads labels with -100
        processing_class=tokenizer,
        callbacks=[DecisionTrackingCallback()],  # the three lines: this one, and the import above
    )
    trainer.train()

    out = work / "out"
    # The second eval set, scored on every checkpoint, into the same MLflow run (tokcal.json in
    # out/ names it). Its own prefix keeps it apart from the live eval_ series.
    run(["backfill", str(out), "--data", str(data["holdout"]), "--metric-prefix", HOLDOUT_PREFIX, "--quiet"])
    run(["report", str(out), "--output", str(work / "report.html")])
    print(f"\nMLflow: mlflow ui --backend-store-uri sqlite:///{work / 'mlflow.db'}   (then http://127.0.0.1:5000)")
    print(f"Report: {work / 'report.html'}")


if __name__ == "__main__":
    main()
