"""Backfill time against the number of checkpoints, split into load, score and log; then a
rerun over the same steps, which must load and score nothing.

``tokcal.jobs.backfill.backfill`` as ``tokcal backfill`` runs it, into a fresh local run
for each count of ``--counts`` checkpoints (copies of one random Qwen2 with the real
151,936 vocabulary, ``checkpoint-100``, ``checkpoint-200``, ...), on ``--samples``
records of about ``--tokens`` tokens. The split comes from timing wrappers around the job's
own steps (``load_checkpoint``, ``score_examples``, ``log_one``); "other" is the rest
(resolving, planning, tokenising once). The rerun goes over the largest count again into
the same run.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

EXAMPLE = "python benchmarks/bench_backfill.py --counts 1,2,4,8,16 --samples 32 --tokens 580"


@contextmanager
def timed_steps() -> Iterator[dict[str, list[float]]]:
    """Time the backfill job's load, score and log steps where the job looks them up."""
    from tokcal.engines import hf
    from tokcal.jobs import backfill as job
    from tokcal.jobs import checkpoints

    spent: dict[str, list[float]] = defaultdict(list)
    originals = [(checkpoints, "load_checkpoint", "load"), (hf, "score_examples", "score"),
                 (job, "log_one", "log")]

    def wrap(fn: Any, name: str) -> Any:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[name].append(time.perf_counter() - t0)
        return timed

    saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in originals]
    for (mod, attr, name), (_, _, fn) in zip(originals, saved):
        setattr(mod, attr, wrap(fn, name))
    try:
        yield spent
    finally:
        for mod, attr, fn in saved:
            setattr(mod, attr, fn)


LINK_ABOVE = 2 * 2**30  # weights bigger than this are hard-linked, not copied (a 3B model x 16)


def make_checkpoints(base: Path, where: Path, n: int) -> tuple[list[Path], bool]:
    """``checkpoint-100`` ... as copies of ``base`` (kept between runs); large weights are
    hard links to the same file. Returns the folders and whether weights are linked."""
    size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    link = size > LINK_ABOVE
    out = []
    for i in range(1, n + 1):
        dst = where / f"checkpoint-{100 * i}"
        if not (dst / "config.json").is_file():
            tmp = dst.with_name(dst.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            copy = (lambda src, d: os.link(src, d) if src.endswith(".safetensors") else shutil.copy2(src, d)) \
                if link else shutil.copy2
            shutil.copytree(base, tmp, copy_function=copy)
            tmp.rename(dst)
        out.append(dst)
    return out, link


def run_backfill(checkpoints: list[Path], data: Path, local_dir: Path, run_id: str | None, device: str,
                 dtype: str, max_tokens: int) -> tuple[float, dict[str, list[float]], Any, str]:
    from tokcal.jobs.backfill import backfill
    from tokcal.jobs.settings import TrackingSettings
    from tokcal.trackers import open_tracker

    tracker = open_tracker("local", local_dir=str(local_dir), run_id=run_id)
    with timed_steps() as spent:
        t0 = time.perf_counter()
        report = backfill([str(c) for c in checkpoints], str(data), tracker, TrackingSettings(), progress=False,
                          output_dir=str(local_dir / "decisions"), max_tokens=max_tokens, device=device,
                          dtype=dtype)
        total = time.perf_counter() - t0
    tracker.close()
    return total, dict(spent), report, tracker.run_id


def main() -> None:
    ap = common.parser(__doc__, EXAMPLE)
    common.add_model_args(ap, samples=32, tokens=580, max_tokens=16384)
    ap.add_argument("--counts", default="1,2,4,8,16", help="numbers of checkpoints (default: 1,2,4,8,16)")
    a = ap.parse_args()
    common.setup_torch(a)
    counts = sorted(int(x) for x in a.counts.split(",") if x.strip())
    base = common.checkpoint(a.workdir, shape=a.shape, seed=a.seed, dtype=a.dtype)
    ckpts, linked = make_checkpoints(base, a.workdir / f"backfill-{base.name}", max(counts))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    data = common.write_jsonl(a.workdir / f"backfill-data-{a.samples}x{a.tokens}.jsonl",
                              common.review_records(a.samples, a.tokens, tok, seed=a.seed))
    scratch = a.workdir / "backfill-runs"
    shutil.rmtree(scratch, ignore_errors=True)
    report = common.Report("bench_backfill", "Backfill: time against checkpoints, and a rerun", {
        "model": f"Qwen2 {a.shape}, vocab {common.VOCAB:,}", "device": a.device, "dtype": a.dtype,
        "samples": a.samples, "tokens per sample": f"~{a.tokens}", "tracker": "local",
        "checkpoints": "copies" + (" (weights hard-linked)" if linked else "")})
    report.start()
    # Warm-up: one checkpoint into a throwaway run (imports, first load from disk).
    run_backfill(ckpts[:1], data, scratch / "warm-up", None, a.device, a.dtype, a.max_tokens)
    rows, series = [], []
    last: tuple[Path, str] | None = None
    for n in counts:
        local = scratch / f"n{n}"
        total, spent, rep, run_id = run_backfill(ckpts[:n], data, local, None, a.device, a.dtype, a.max_tokens)
        if not rep.ok or len(rep.logged) != n:
            sys.exit(f"expected {n} checkpoints logged, got: {rep.summary()}")
        split = {k: sum(spent.get(k, [])) for k in ("load", "score", "log")}
        other = total - sum(split.values())
        rows.append([n, total, total / n, split["load"], split["score"], split["log"], other])
        series.append({"checkpoints": n, "total": total, **split, "other": other})
        print(f"  {n} checkpoints: {total:.1f} s", flush=True)
        last = (local, run_id)
    report.table("Backfill into a new run", ["checkpoints", "total s", "per checkpoint s", "load s", "score s",
                                             "log s", "other s"], rows,
                 note="load: load_checkpoint; score: score_examples; log: log_one (metrics, the per-decision "
                      "file, figures, the local store); other: resolving, planning, tokenising the data once.")
    per = [r[2] for r in rows]
    report.check("backfill time linear in checkpoints", f"per checkpoint {min(per):.2f}-{max(per):.2f} s",
                 "per-checkpoint time steady (within 1.5x)", max(per) <= 1.5 * min(per),
                 note="the first count carries the fixed cost (resolve, tokenise) alone")
    assert last is not None
    local, run_id = last
    total, spent, rep, _ = run_backfill(ckpts[:max(counts)], data, local, run_id, a.device, a.dtype, a.max_tokens)
    loads, scores = len(spent.get("load", [])), len(spent.get("score", []))
    report.table("Rerun over the same steps", ["checkpoints", "total s", "loaded", "scored", "skipped"],
                 [[max(counts), total, loads, scores, len(rep.skipped)]])
    report.check("rerun loads and scores nothing", f"{loads} loads, {scores} scorings, {len(rep.skipped)} skipped "
                 f"in {total:.2f} s", "0 loads, 0 scorings", loads == 0 and scores == 0
                 and len(rep.skipped) == max(counts))
    report.extra = {"series": series, "rerun": {"total": total, "loads": loads, "scores": scores}}
    report.write(a.json)


if __name__ == "__main__":
    main()
