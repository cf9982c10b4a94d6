"""Peak memory of tokcal's scorer against a plain full-logits forward.

Sequence length 1024, the real Qwen2.5 vocabulary size (151,936), a tiny random Qwen2 so
that the logits dominate. Each variant runs in a fresh process and reports the growth of
its peak resident set over the loaded model (CPU) or torch's peak allocation (CUDA).

    python benchmarks/bench_scoring_memory.py [--batch 2] [--seq 1024] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VOCAB = 151_936


def child(variant: str, batch: int, seq: int, device: str) -> dict:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tracking.core.scores import decision_probs
    from tracking.core.scoring import _LogitsAtPositions
    from tracking.core.spec import DecisionSpec, ResolvedSpec

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=seq + 8)
    model = Qwen2ForCausalLM(cfg).to(device).eval()
    ids = torch.randint(0, 150_000, (batch, seq), device=device)
    rows = torch.arange(batch, device=device)
    cols = torch.full((batch,), seq - 2, device=device)
    resolved = ResolvedSpec(DecisionSpec(), ((16646, 10330), (78413, 21704)), ())
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():
        if variant == "tokcal":
            logits = _LogitsAtPositions(model)({"input_ids": ids}, rows, cols)
            probs = decision_probs(logits, resolved)
        else:  # what a second, plain evaluation pass does
            logits = model(input_ids=ids).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            probs = logp[rows, cols - 1][:, [16646, 78413]].exp().cpu().numpy()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "peak_mib": peak / 2**20, "decisions": int(probs.shape[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.batch, a.seq, a.device)))
        return
    results = {}
    for variant in ("tokcal", "full-logits"):
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--batch", str(a.batch), "--seq",
                              str(a.seq), "--device", a.device], capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    full, ours = results["full-logits"]["peak_mib"], results["tokcal"]["peak_mib"]
    logits_mib = a.batch * a.seq * VOCAB * 4 / 2**20
    print(f"batch {a.batch} x seq {a.seq} x vocab {VOCAB} on {a.device} (fp32 logits alone: {logits_mib:.0f} MiB)")
    print(f"{'variant':<12} {'peak MiB over model':>20}")
    print(f"{'full-logits':<12} {full:>20.1f}")
    print(f"{'tokcal':<12} {ours:>20.1f}")
    print(f"ratio full/tokcal: {full / max(ours, 1e-9):.1f}x")


if __name__ == "__main__":
    main()
