"""Evaluation time with and without DecisionTrackingCallback, in one run.

The callback reads the Trainer's own eval logits, so the eval loop should cost the same.
Two ratios are printed:

- ``loop``: the Trainer's ``eval_runtime`` (the forward passes, with the capture hook);
- ``evaluate``: the whole ``trainer.evaluate()`` call, which adds the callback's
  ``on_evaluate`` (gather, metrics, figures, logging to the local store);
- ``evaluate cpu``: the same in process CPU time, which other load on the machine disturbs
  less than wall time;
- ``+ flush``: the whole call plus waiting for the background writer (figures, local store),
  i.e. all the work the callback causes, even what overlaps with training.

    python benchmarks/bench_callback_eval.py [--eval 256] [--repeats 5] [--hidden 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", type=int, default=256, help="eval samples")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()

    import torch
    from transformers import (
        DataCollatorForSeq2Seq,
        Qwen2Config,
        Qwen2ForCausalLM,
        Trainer,
        TrainingArguments,
    )

    from callbacks import DecisionTrackingCallback
    from tests.helpers.tokenizers import qwen25_tokenizer
    from tests.helpers.training import as_dataset
    from tracking.data.synthetic import review_records

    tok = qwen25_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=151_936, hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=2)
    model = Qwen2ForCausalLM(cfg)
    data = as_dataset(review_records(a.eval, seed=7), tok)
    tmp = Path(tempfile.mkdtemp())

    def trainer(callbacks: list) -> Trainer:
        args = TrainingArguments(output_dir=str(tmp / str(len(callbacks))), per_device_eval_batch_size=8,
                                 report_to="none", use_cpu=True, disable_tqdm=True)
        return Trainer(model=model, args=args, eval_dataset=data, processing_class=tok,
                       data_collator=DataCollatorForSeq2Seq(tok, padding=True), callbacks=callbacks)

    cb = DecisionTrackingCallback(backend="local")
    plain, tracked = trainer([]), trainer([cb])
    plain.evaluate()  # warm-up
    tracked.evaluate()
    loop = {"plain": [], "tracked": []}
    total = {"plain": [], "tracked": []}
    cpu = {"plain": [], "tracked": []}
    flushed = {"plain": [], "tracked": []}
    for _ in range(a.repeats):  # interleaved, so drift hits both alike
        for name, t in (("plain", plain), ("tracked", tracked)):
            t0, c0 = time.perf_counter(), time.process_time()
            m = t.evaluate()
            total[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            cb.flush()  # nothing pending may spill into the next measurement
            flushed[name].append(time.perf_counter() - t0)
            loop[name].append(m["eval_runtime"])
    med = {k: {n: statistics.median(v[n]) for n in v} for k, v in (("loop", loop), ("evaluate", total), ("evaluate cpu", cpu), ("+ flush", flushed))}
    print(f"Qwen2 hidden {a.hidden} x {a.layers} layers, vocab 151,936, {a.eval} eval samples, "
          f"{torch.get_num_threads()} threads, median of {a.repeats}")
    print(f"{'':<13} {'plain s':>9} {'tracked s':>10} {'ratio':>7}")
    for k, v in med.items():
        print(f"{k:<13} {v['plain']:>9.3f} {v['tracked']:>10.3f} {v['tracked'] / v['plain']:>7.3f}")


if __name__ == "__main__":
    main()
