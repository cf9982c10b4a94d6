"""A tiny decision model trained for real on the demo's review data, for tests that need a
model that writes its own ``\\boxed{...}`` answers (generate mode) and engines that need a
head size of 64 (vLLM's CPU attention refuses smaller ones).

:func:`train_decision_model` trains the demo's tokenizer and a ``Qwen2ForCausalLM`` (two heads
of 64) with a plain AdamW loop on prompt-masked answers, and saves ``checkpoint-N`` folders.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence


def train_decision_model(folder: str | Path, *, steps: Sequence[int] = (120,), n_train: int = 320, n_eval: int = 40,
                         hidden: int = 128, heads: int = 2, layers: int = 2, seed: int = 0,
                         batch_size: int = 16, lr: float = 3e-3, reasoning: bool = False) -> dict[str, Any]:
    """Train and save a checkpoint at each of ``steps``.

    With ``reasoning``, each answer gives its verdict in words before the decision ("Summary:
    the reviews lean negative. Decision: \\boxed{Reject}"), so the gold text gives the decision
    away to teacher-forced scoring, while the model's own answer has to find it.

    Returns:
        ``{"checkpoints": [Path, ...], "eval": Path, "train": Path, "output_dir": Path}``.
    """
    import torch

    from tokcal.data.conversation import tokenize_records
    from tokcal.data.records import read_records
    from tokcal.data.synthetic import review_records
    from tokcal.demo.model import build_model, save_model
    from tokcal.demo.tokenizer import corpus, train_tokenizer

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, n, s in (("train", n_train, seed), ("eval", n_eval, seed + 1)):
        recs = review_records(n, seed=s, noise=0.1)
        for r in recs:
            r["id"] = f"{name}-{r['id']}"
            if reasoning:
                answer = r["messages"][-1]
                lean = "positive" if "Accept" in answer["content"] else "negative"
                answer["content"] = f"Summary: the reviews lean {lean}. " + answer["content"]
        paths[name] = out / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    tok = train_tokenizer(corpus(read_records(paths["train"])), vocab_size=640)
    model = build_model(tok, hidden=hidden, layers=layers, heads=heads, seed=seed)
    model.config.max_position_embeddings = 1024
    rows = [(e.input_ids, e.labels) for e in tokenize_records(read_records(paths["train"]), tok)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    saved = []
    model.train()
    for step in range(1, max(steps) + 1):
        batch = rng.sample(rows, batch_size)
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((batch_size, width), -100, dtype=torch.long)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, :len(x)] = torch.tensor(x)
            labels[i, :len(y)] = torch.tensor(y)
            mask[i, :len(x)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step in steps:
            model.eval()
            model.generation_config.eos_token_id = tok.eos_token_id
            model.generation_config.pad_token_id = tok.pad_token_id
            saved.append(save_model(model, tok, out / f"checkpoint-{step}"))
            model.train()
    return {"checkpoints": saved, "eval": paths["eval"], "train": paths["train"], "output_dir": out}
