"""TRL's SFTTrainer with tokcal, logging to Weights & Biases (offline here, online for you).

What it shows:

* your ``messages`` JSONL turned into TRL's prompt-completion rows (``prompt``: the system and
  user turns, ``completion``: the assistant's answer), so SFTTrainer trains on the answer only;
* ``DecisionTrackingCallback()`` added to ``SFTTrainer`` exactly as to the ``Trainer``;
* ``report_to=["wandb"]``: tokcal logs into the run the Trainer's W&B integration opens,
  ``eval/decision_accuracy`` etc. against ``train/global_step``. With ``WANDB_MODE=offline``
  (the default here, so no account is needed) the run is written under ``--work``/wandb; upload
  it later with the ``wandb sync`` command printed at the end. Pass ``--online`` to log to
  wandb.ai directly (after ``wandb login``).

Run (a few minutes on a laptop CPU; a tiny random model is built first unless ``--model``):

    python examples/trl_sft.py                           # everything under examples-out/trl_sft
    python examples/trl_sft.py --data-dir my_data --model my_model --steps 200 --online
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def prompt_completion(path: Path) -> Any:
    """``messages`` records as a ``datasets.Dataset`` of conversational prompt-completion rows."""
    import datasets

    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            messages = json.loads(line)["messages"]
            rows.append({"prompt": messages[:-1], "completion": messages[-1:]})
    return datasets.Dataset.from_list(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Run")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("examples-out/trl_sft"), help="output folder")
    ap.add_argument("--data-dir", type=Path, help="train.jsonl and eval.jsonl (default: synthetic)")
    ap.add_argument("--model", type=Path, help="a causal LM folder (default: a tiny random one built here)")
    ap.add_argument("--train", type=int, default=400, help="synthetic training records (default: 400)")
    ap.add_argument("--eval", type=int, default=64, help="synthetic eval records (default: 64)")
    ap.add_argument("--steps", type=int, default=120, help="training steps (default: 120)")
    ap.add_argument("--eval-steps", type=int, default=30, help="evaluate and save every N steps (default: 30)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--project", default="tokcal-examples", help="W&B project (default: tokcal-examples)")
    ap.add_argument("--online", action="store_true", help="log to wandb.ai instead of offline files")
    a = ap.parse_args()

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not a.online:
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_DIR", str(work))
    os.environ.setdefault("WANDB_PROJECT", a.project)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tokcal import DecisionTrackingCallback

    if a.data_dir is None:
        from sample_data import write_reviews

        data = write_reviews(work / "data", a.train, a.eval, 0)
    else:
        data = {name: a.data_dir / f"{name}.jsonl" for name in ("train", "eval")}
    if a.model is None:
        from make_tiny_model import build_text_model

        a.model = build_text_model(work / "tiny-model", [data["train"]])
        print(f"built a tiny random model in {a.model}")

    tokenizer = AutoTokenizer.from_pretrained(str(a.model))
    model = AutoModelForCausalLM.from_pretrained(str(a.model))
    config = SFTConfig(
        output_dir=str(work / "out"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=32, learning_rate=a.lr, lr_scheduler_type="cosine", warmup_steps=a.steps // 10,
        eval_strategy="steps", eval_steps=a.eval_steps, save_strategy="steps", save_steps=a.eval_steps,
        save_only_model=True, logging_steps=a.eval_steps, report_to=["wandb"], run_name="trl-sft",
        use_cpu=not torch.cuda.is_available(), seed=0, data_seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=config, processing_class=tokenizer,
        train_dataset=prompt_completion(data["train"]), eval_dataset=prompt_completion(data["eval"]),
        callbacks=[DecisionTrackingCallback()],
    )
    trainer.train()

    import wandb

    run = wandb.run
    folder = Path(run.dir).parent if run is not None else work / "wandb"
    if run is not None:
        run.finish()
    if a.online:
        print(f"\nW&B run: {run.url if run is not None else '(see above)'}")
    else:
        print(f"\nW&B offline run in {folder}\nUpload it with: wandb sync {folder}")


if __name__ == "__main__":
    main()
