"""Scoring throughput and memory: tokcal's scorer against what else could score decisions.

Every variant runs in a fresh process on the same checkpoint (a random Qwen2 with the real
151,936 vocabulary) and the same samples, in the same batches where it batches:

- ``tokcal``: ``tokcal.core.scoring.score`` (logits at the answer positions only);
- ``body only``: the model body over the same batches, no LM head: the limit of any scorer
  that must run the model;
- ``body + head`` (in the in-turns loop only): the body, then the LM head and a log-softmax
  at the answer positions only: what any scorer of exact label probabilities must compute
  (the normaliser needs every one of the 151,936 logits at each answer);
- ``full logits``: a bare ``model(input_ids)`` forward with full logits over the same
  batches, nothing else (what a user's own loop costs);
- ``naive``: full logits, softmax over the vocabulary, index, one sample at a time;
- ``lm-eval``: lm-evaluation-harness's Hugging Face ``loglikelihood`` (``HFLM``) on the
  same samples posed as a two-choice task: context = the rendered prompt up to the answer
  prefix, continuations the two labels as tokenised in context (needs ``pip install lm-eval``;
  ``make bench`` puts it in ``.venv-bench``).

Reported per variant: decisions per second in-process (the scoring loop) and for the whole
process (start, imports, load, data, scoring), peak resident memory over the loop's start
and of the whole process (and the device's peak allocation on CUDA). Then the peak memory of
tokcal and of the full-logits forward at sequence length ``--memory-seq``. tokcal's and
lm-eval's probabilities are checked against the naive full softmax.

Targets: tokcal at least 0.9x the body-only forward; at least 30x lm-eval on the tiny model
on a CPU (on a GPU, 3B-shaped model: at least 1.5x); at most a tenth of the full-logits
peak memory at sequence length 1024.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

EXAMPLE = "python benchmarks/bench_scoring.py --samples 64 --tokens 580 [--device cuda --dtype bfloat16 --shape 3b]"
VARIANTS = ("tokcal", "body only", "full logits", "naive", "lm-eval")


# ----------------------------------------------------------------------- in the child


def _loop(variant: str, model: Any, tok: Any, examples: list[Any], a: Any) -> tuple[Any, list[Any], dict[str, Any]]:
    """One variant's scoring loop: ``(run, data, out)``; ``run(data)`` scores and returns the
    number of decisions, ``out`` then holds the arrays to compare."""
    import numpy as np
    import torch

    from tokcal.core.positions import find_answer_positions
    from tokcal.core.scoring import score
    from tokcal.core.spec import DecisionSpec

    resolved = DecisionSpec().resolve(tok)
    batches = common.batches(examples, tok, a.max_tokens)
    dev = torch.device(a.device)
    out: dict[str, Any] = {}

    def inputs(b: dict[str, Any]) -> dict[str, Any]:
        return {"input_ids": b["input_ids"].to(dev), "attention_mask": b["attention_mask"].to(dev)}

    if variant == "tokcal":
        def run(bs: list[dict[str, Any]]) -> int:
            s = score(model, bs, resolved)
            out["probs"], out["index"] = s.probs, s.sample_index
            return len(s)
        return run, batches, out
    if variant == "body only":
        def run(bs: list[dict[str, Any]]) -> int:
            with torch.inference_mode():
                for b in bs:
                    _ = model.model(**inputs(b)).last_hidden_state
            return sum(len(b["sample_index"]) for b in bs)
        return run, batches, out
    if variant == "body + head":
        def run(bs: list[dict[str, Any]]) -> int:
            n = 0
            with torch.inference_mode():
                for b in bs:
                    p = find_answer_positions(b["labels"], resolved, b["input_ids"])
                    h = model.model(**inputs(b)).last_hidden_state
                    at = h[torch.as_tensor(p.rows, device=dev), torch.as_tensor(p.cols - 1, device=dev)]
                    _ = torch.log_softmax(model.lm_head(at).float(), dim=-1)
                    n += len(p.rows)
            return n
        return run, batches, out
    if variant == "full logits":
        def run(bs: list[dict[str, Any]]) -> int:
            with torch.inference_mode():
                for b in bs:
                    _ = model(**inputs(b)).logits
            return sum(len(b["sample_index"]) for b in bs)
        return run, batches, out
    if variant == "naive":
        canonical = [ids[0] for ids in resolved.token_ids]

        def run(exs: list[Any]) -> int:
            probs, first, index = [], [], []
            with torch.inference_mode():
                for i, e in enumerate(exs):
                    ids = torch.tensor([e.input_ids], device=dev)
                    p = torch.softmax(model(input_ids=ids).logits.float(), dim=-1)[0]
                    pos = find_answer_positions(torch.tensor([e.labels]), resolved, ids.cpu())
                    at = p[torch.as_tensor(pos.cols - 1, device=dev)]
                    probs.append(torch.stack([at[:, list(t)].sum(-1) for t in resolved.token_ids], -1).double().cpu())
                    first.append(at[:, canonical].double().cpu())
                    index += [i] * len(pos.cols)
            out["probs"], out["canonical"] = torch.cat(probs).numpy(), torch.cat(first).numpy()
            out["index"] = np.asarray(index)
            return len(index)
        return run, examples, out
    if variant == "lm-eval":
        return _lm_eval_loop(tok, examples, resolved, a, out)
    raise SystemExit(f"expected a variant in {VARIANTS}, got {variant!r}")


def _lm_eval_requests(tok: Any, records: list[dict[str, Any]], resolved: Any) -> list[Any]:
    """Each record as a two-choice loglikelihood task: the rendered prompt up to the answer
    prefix, then each label."""
    from lm_eval.api.instance import Instance

    prefix = resolved.spec.prefix
    reqs = []
    for i, r in enumerate(records):
        text = tok.apply_chat_template(r["messages"], tokenize=False)
        cut = text.rindex(prefix) + len(prefix)
        for k, label in enumerate(resolved.labels):
            reqs.append(Instance("loglikelihood", {"i": i}, (text[:cut], label), idx=k))
    return reqs


def _lm_eval_loop(tok: Any, examples: list[Any], resolved: Any, a: Any,
                  out: dict[str, Any]) -> tuple[Any, list[Any], dict[str, Any]]:
    import numpy as np
    from lm_eval.models.huggingface import HFLM

    records = common.review_records(a.samples, a.tokens, tok, seed=a.seed)
    reqs = _lm_eval_requests(tok, records, resolved)
    longest = max(len(e) for e in examples)
    lm = HFLM(pretrained=str(a.checkpoint), device=a.device, dtype=a.dtype,
              batch_size=max(1, a.max_tokens // longest), max_length=longest + 8)
    k = len(resolved.labels)

    def run(rs: list[Any]) -> int:
        res = lm.loglikelihood(rs, disable_tqdm=True)
        out["canonical"] = np.exp(np.array([lp for lp, _ in res])).reshape(-1, k)
        out["index"] = np.arange(len(res) // k)
        return len(res) // k
    return run, reqs, out


def child(a: Any) -> None:
    t_start = time.perf_counter()
    torch = common.setup_torch(a)
    import numpy as np

    model, tok = common.load(a.checkpoint, a.device, a.dtype) if a.child != "lm-eval" else (None, None)
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(a.checkpoint), local_files_only=True)
    examples = common.review_examples(a.samples, a.tokens, tok, seed=a.seed)
    result: dict[str, Any] = {"variant": a.child}
    if a.memory_only:  # a process of its own, so that nothing ran before: what the scorer needs
        result.update(_memory_at(a, model, tok))
        print("RESULT " + json.dumps(result))
        return
    run, data, keep = _loop(a.child, model, tok, examples, a)
    whole_before = common.peak_rss_mib()
    # The fast variants' loops are short, so a burst of other load could swamp one: their
    # median of --repeats; the slow ones (full logits) run long enough to average it out.
    loops = max(1, a.repeats) if a.child in ("tokcal", "body only") else 1
    walls, cpus = [], []
    with common.peak_memory(a.device) as mem:
        run(data[:2] if a.child == "lm-eval" else data[:1])  # warm-up: one batch, sample or request pair
        for _ in range(loops):
            with common.clock(a.device) as c:
                n = run(data)
            walls.append(c.wall)
            cpus.append(c.cpu)
    result.update({"decisions": n, "loop_wall": common.median(walls), "loop_cpu": common.median(cpus),
                   "loops": loops, "loop_host_mib": mem.host_mib,
                   "loop_device_mib": mem.device_mib, "whole_peak_mib": max(whole_before, mem.whole_process_mib),
                   "child_seconds": time.perf_counter() - t_start})
    if keep:
        np.savez(a.out, **{k: np.asarray(v) for k, v in keep.items()})
    if a.child == "tokcal" and a.repeats > 0:
        result.update(_interleaved(a, model, tok, examples))
    del torch
    print("RESULT " + json.dumps(result))


def _interleaved(a: Any, model: Any, tok: Any, examples: list[Any]) -> dict[str, Any]:
    """tokcal and the body-only forward in turns in this process, on the same batches of
    tokcal's own default size (``--turns-max-tokens``): the ratio of their median loop times
    is steadier than two processes' on a busy machine."""
    b = argparse_namespace(a, max_tokens=a.turns_max_tokens)
    run, data, _ = _loop("tokcal", model, tok, examples, b)
    body, body_data, _ = _loop("body only", model, tok, examples, b)
    head, head_data, _ = _loop("body + head", model, tok, examples, b)
    run(data[:1])
    body(body_data[:1])
    head(head_data[:1])
    times: dict[str, list[float]] = {"tokcal": [], "body only": [], "body + head": []}
    for _ in range(a.repeats):
        for name, fn, d in (("tokcal", run, data), ("body only", body, body_data), ("body + head", head, head_data)):
            with common.clock(a.device) as c:
                fn(d)
            times[name].append(c.wall)
    return {"interleaved": times, "turns_max_tokens": a.turns_max_tokens}


def _memory_at(a: Any, model: Any, tok: Any) -> dict[str, Any]:
    """Peak memory of the variant on ``--memory-batch`` samples of ``--memory-seq`` tokens."""
    examples = common.review_examples(a.memory_batch, a.memory_seq, tok, seed=a.seed + 7)
    longest = max(len(e) for e in examples)
    run, _, _ = _loop(a.child, model, tok, examples, argparse_namespace(a, max_tokens=longest * a.memory_batch))
    bs = common.batches(examples, tok, max_tokens=longest * a.memory_batch)
    with common.peak_memory(a.device) as mem:
        run(bs)
    return {"mem_seq": longest, "mem_rows": a.memory_batch, "mem_host_mib": mem.host_mib,
            "mem_device_mib": mem.device_mib}


# ----------------------------------------------------------------------- in the parent


def run_variant(variant: str, a: Any, *, memory_only: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--checkpoint", str(a.checkpoint),
           "--out", str(a.workdir / "scoring" / f"{variant.replace(' ', '_')}.npz")]
    cmd += ["--memory-only"] if memory_only else []
    for flag in ("device", "dtype", "shape", "samples", "tokens", "max_tokens", "seed", "threads", "memory_seq",
                 "memory_batch", "repeats", "turns_max_tokens"):
        value = getattr(a, flag)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    (a.workdir / "scoring").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=common.env_for_children(), check=False)
    wall = time.perf_counter() - t0
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"variant": variant, "error": " | ".join(tail) or f"exit {proc.returncode}"}
    res = json.loads(lines[-1][len("RESULT "):])
    res["process_wall"] = wall
    return res


def _load(a: Any, variant: str) -> dict[str, Any]:
    import numpy as np

    path = a.workdir / "scoring" / f"{variant.replace(' ', '_')}.npz"
    return dict(np.load(path)) if path.is_file() else {}


def main() -> None:
    ap = common.parser(__doc__, EXAMPLE)
    common.add_model_args(ap, samples=64, tokens=580)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--memory-seq", type=int, default=1024, help="sequence length of the memory comparison (0: skip)")
    ap.add_argument("--memory-batch", type=int, default=2, help="rows of the memory comparison (default: 2)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="tokcal and body-only loops in turns in one process for their ratio (default: 5)")
    ap.add_argument("--turns-max-tokens", type=int, default=16384,
                    help="padded tokens per batch of those turns: tokcal's own default (default: 16384)")
    ap.add_argument("--child", help=argparse_suppress())
    ap.add_argument("--checkpoint", type=Path, help=argparse_suppress())
    ap.add_argument("--out", type=Path, help=argparse_suppress())
    ap.add_argument("--memory-only", action="store_true", help=argparse_suppress())
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    common.setup_torch(a)
    a.checkpoint = common.checkpoint(a.workdir, shape=a.shape, seed=a.seed, dtype=a.dtype)
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    report = common.Report("bench_scoring", "Scoring throughput and memory", {
        "model": f"Qwen2 {a.shape}, vocab {common.VOCAB:,}", "device": a.device, "dtype": a.dtype,
        "samples": a.samples, "tokens per sample": f"~{a.tokens}", "batch": f"<= {a.max_tokens} padded tokens"})
    report.start()
    res: dict[str, dict[str, Any]] = {}
    for v in variants:
        res[v] = run_variant(v, a)
        r = res[v]
        print(f"{v}: " + (f"{r['decisions'] / r['loop_wall']:.1f} decisions/s in-process, "
                          f"{r['process_wall']:.1f} s whole process" if "error" not in r else f"FAILED {r['error']}"),
              flush=True)
    if a.memory_seq:
        for v in ("tokcal", "full logits"):
            if v in variants:
                mem = run_variant(v, a, memory_only=True)
                res[v].update({k: x for k, x in mem.items() if k.startswith("mem_")})
    cuda = a.device.startswith("cuda")
    rows = []
    for v, r in res.items():
        if "error" in r:
            rows.append([v, "failed", "-", "-", "-", "-", r["error"][:80]])
            continue
        rows.append([v, r["decisions"] / r["loop_wall"], r["decisions"] / r["process_wall"],
                     r["loop_device_mib"] if cuda else r["loop_host_mib"], r["whole_peak_mib"], r["loop_cpu"], ""])
    report.table("Throughput and peak memory", ["variant", "decisions/s in-process", "decisions/s whole process",
                 "peak MiB over loop start" + (" (CUDA)" if cuda else " (RSS)"), "whole-process peak RSS MiB",
                 "loop CPU s", "note"], rows,
                 note="in-process: the scoring loop after a warm-up (tokcal and body only: the median of "
                      f"{a.repeats} loops); whole process: start to exit (imports, load, data, warm-up, loops).")
    ok = {v: r for v, r in res.items() if "error" not in r}
    rate = {v: r["decisions"] / r["loop_wall"] for v, r in ok.items()}
    _agreement(report, a, ok)
    turns = ok.get("tokcal", {}).get("interleaved")
    if turns:
        x = common.median(turns["body only"]) / common.median(turns["tokcal"])
        same = f"; on the table's {a.max_tokens}-token batches: {rate['tokcal'] / rate['body only']:.2f}x" \
            if "body only" in rate else ""
        report.check(f"tokcal / body-only forward, decisions/s ({ok['tokcal']['turns_max_tokens']}-token batches, "
                     f"in turns, median of {len(turns['tokcal'])})", f"{x:.2f}x{same}", ">= 0.9x", x >= 0.9,
                     note="the body-only forward leaves out the LM head at the answers, which exact label "
                          f"probabilities need: {common.VOCAB:,} x hidden multiply-adds per decision, on the tiny "
                          "shape (hidden 64) about a tenth of a 580-token sample's body, on a 3B shape (hidden "
                          "2,048, 36 layers) about 0.02 %; see the next line")
        if "body + head" in turns:
            y = common.median(turns["body + head"]) / common.median(turns["tokcal"])
            report.check("tokcal / (body + LM head at the answers only), decisions/s, in turns", f"{y:.2f}x",
                         ">= 0.9x (the limit of an exact scorer)", y >= 0.9,
                         note="what tokcal itself adds beyond that minimum: positions, batching, the "
                              "label columns")
    cpu_rate = {v: r["decisions"] / max(r["loop_cpu"], 1e-9) for v, r in ok.items()}
    if "tokcal" in rate and "lm-eval" in rate:
        x = rate["tokcal"] / rate["lm-eval"]
        xc = f"{x:.1f}x (CPU time: {cpu_rate['tokcal'] / cpu_rate['lm-eval']:.1f}x)"
        if cuda and a.shape == "3b":
            report.check("tokcal / lm-eval, 3B-shaped model on the GPU", xc, ">= 1.5x", x >= 1.5)
        else:
            report.check(f"tokcal / lm-eval, {a.shape} model on {a.device}", xc, ">= 30x", x >= 30,
                         note="lm-eval computes full logits and a log-softmax at every position")
        if not (cuda and a.shape == "3b"):
            report.check("tokcal / lm-eval, 3B-shaped model on a GPU", "not measured", ">= 1.5x", None,
                         note="needs a GPU: make bench BENCH_ARGS='--device cuda --dtype bfloat16 --shape 3b'")
    if "full logits" in rate and "tokcal" in rate:
        report.check("tokcal / full-logits forward, decisions/s", f"{rate['tokcal'] / rate['full logits']:.1f}x "
                     f"(CPU time: {cpu_rate['tokcal'] / cpu_rate['full logits']:.1f}x)", "reported", None)
    _memory(report, ok, cuda)
    report.extra = {"results": res}
    report.write(a.json)


def _agreement(report: common.Report, a: Any, ok: dict[str, Any]) -> None:
    import numpy as np

    naive = _load(a, "naive") if "naive" in ok else {}
    if not naive:
        return
    for v, key in (("tokcal", "probs"), ("lm-eval", "canonical")):
        other = _load(a, v) if v in ok else {}
        if not other:
            continue
        order_n, order_o = np.argsort(naive["index"], kind="stable"), np.argsort(other["index"], kind="stable")
        x, y = naive[key][order_n], other[key][order_o]
        diff = float(np.max(np.abs(x - y))) if x.shape == y.shape else float("inf")
        report.check(f"{v} probabilities = naive full softmax", f"max |diff| {diff:.1e} over {len(x)} decisions",
                     "< 1e-4" if a.dtype == "float32" else "< 2e-2", diff < (1e-4 if a.dtype == "float32" else 2e-2))


def _memory(report: common.Report, ok: dict[str, Any], cuda: bool) -> None:
    mem = {v: r for v, r in ok.items() if "mem_seq" in r}
    if "tokcal" not in mem or "full logits" not in mem:
        return
    key = "mem_device_mib" if cuda else "mem_host_mib"
    t, f = mem["tokcal"], mem["full logits"]
    logits = t["mem_rows"] * t["mem_seq"] * common.VOCAB * 4 / 2**20
    report.table(f"Peak memory, batch {t['mem_rows']} x {t['mem_seq']} tokens",
                 ["variant", "peak MiB over loop start" + (" (CUDA)" if cuda else " (RSS)")],
                 [["tokcal", t[key]], ["full logits", f[key]]],
                 note=f"float32 logits alone: {logits:.0f} MiB.")
    ratio = t[key] / max(f[key], 1e-9)
    report.check(f"tokcal / full-logits peak memory at {t['mem_seq']} tokens", f"{ratio:.3f} "
                 f"({t[key]:.0f} vs {f[key]:.0f} MiB)", "<= 0.1", ratio <= 0.1)


def argparse_namespace(a: Any, **changes: Any) -> Any:
    import argparse

    return argparse.Namespace(**{**vars(a), **changes})


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
