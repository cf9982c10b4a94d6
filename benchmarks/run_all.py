"""Run every benchmark, print its tables and ratios, and write docs/benchmarks.md and the
scaling plot (docs/benchmarks_scaling.png). This is what ``make bench`` runs.

Profiles (sizes of each script; any script flag can be added with --extra):

- ``default``: fits in 10 minutes on 2 CPU cores: the callback benchmark on 16 eval
  samples, scoring on 32, the eval-set sweep on samples of about 128 tokens, backfill over
  1, 4 and 16 checkpoints;
- ``full``: the issue's sizes everywhere (callback on 64 samples, scoring on 256, backfill
  over 1, 2, 4, 8, 16 checkpoints): about twice as long on a CPU, the one to use on a GPU;
- ``quick``: a smoke run of every script on a handful of samples (a few minutes).

The scripts run one after another, each in its own process; a script that fails is reported
and the others still run (exit status 1 then). Targets missed are not failures: they are
named in the report with the reason.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

EXAMPLE = ("python benchmarks/run_all.py                      # make bench\n"
           "  python benchmarks/run_all.py --profile quick --no-docs\n"
           "  python benchmarks/run_all.py --profile full --device cuda --dtype bfloat16 --shape 3b")
SCRIPTS = ("bench_callback_eval", "bench_scoring", "bench_scaling", "bench_backfill", "bench_logging")
MODEL_SCRIPTS = SCRIPTS[:4]
BUDGET_S = 600  # the issue: make bench in under 10 minutes on 2 CPU cores

PROFILES: dict[str, dict[str, list[str]]] = {
    "default": {
        "bench_callback_eval": ["--samples", "16", "--tokens", "580", "--repeats", "5"],
        "bench_scoring": ["--samples", "32", "--tokens", "580", "--memory-seq", "1024", "--repeats", "5"],
        "bench_scaling": ["--sizes", "64,128,256,512,1024", "--tokens", "128", "--lengths", "256,512,1024,2048,4096",
                          "--length-samples", "8", "--repeats", "3"],
        "bench_backfill": ["--counts", "1,4,16", "--samples", "32", "--tokens", "256"],
        "bench_logging": ["--decisions", "10000", "--repeats", "5"],
    },
    "full": {
        "bench_callback_eval": ["--samples", "64", "--tokens", "580", "--repeats", "5"],
        "bench_scoring": ["--samples", "256", "--tokens", "580", "--memory-seq", "1024", "--repeats", "5"],
        "bench_scaling": ["--sizes", "64,128,256,512,1024", "--tokens", "580", "--lengths", "256,512,1024,2048,4096",
                          "--length-samples", "32", "--repeats", "3"],
        "bench_backfill": ["--counts", "1,2,4,8,16", "--samples", "64", "--tokens", "580"],
        "bench_logging": ["--decisions", "10000", "--repeats", "7"],
    },
    "quick": {
        "bench_callback_eval": ["--samples", "8", "--tokens", "580", "--repeats", "2"],
        "bench_scoring": ["--samples", "8", "--tokens", "580", "--memory-seq", "1024", "--repeats", "2"],
        "bench_scaling": ["--sizes", "16,32,64", "--tokens", "256", "--lengths", "256,1024,4096",
                          "--length-samples", "4", "--repeats", "1"],
        "bench_backfill": ["--counts", "1,2,4", "--samples", "8", "--tokens", "256"],
        "bench_logging": ["--decisions", "10000", "--repeats", "2"],
    },
}
KEEP_MARKER = "<!-- Written by hand below this line: benchmarks/run_all.py keeps it. -->"
README_START, README_END = "<!-- bench-table-start -->", "<!-- bench-table-end -->"


def main() -> None:
    ap = common.parser(__doc__, EXAMPLE)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="default")
    ap.add_argument("--only", default="", help="comma-separated scripts to run (default: all)")
    ap.add_argument("--extra", action="append", default=[], metavar="SCRIPT=ARGS",
                    help="more flags for one script, e.g. --extra 'bench_scoring=--samples 128'")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shape", default="tiny", choices=["tiny", "3b"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--docs", type=Path, default=common.ROOT / "docs" / "benchmarks.md",
                    help="the report to write (default: docs/benchmarks.md)")
    ap.add_argument("--no-docs", action="store_true", help="print only")
    ap.add_argument("--readme", type=Path, default=None,
                    help="README whose benchmark table to refresh (default: README.md when --docs is the default)")
    ap.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    a = ap.parse_args()
    a.commit = git_commit()  # before anything is written: the page and the plot are outputs, not changes
    only = [s.strip() for s in a.only.split(",") if s.strip()] or list(SCRIPTS)
    unknown = [s for s in only if s not in SCRIPTS]
    if unknown:
        sys.exit(f"expected scripts among {', '.join(SCRIPTS)}, got {', '.join(unknown)}")
    extra: dict[str, list[str]] = {}
    for item in a.extra:
        name, _, args = item.partition("=")
        if name not in SCRIPTS:
            sys.exit(f"expected --extra SCRIPT=ARGS with SCRIPT among {', '.join(SCRIPTS)}, got {item!r}")
        extra.setdefault(name, []).extend(shlex.split(args))
    results_dir = a.workdir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    commands: dict[str, str] = {}
    runs: list[dict[str, Any]] = []
    for name in only:
        out = results_dir / f"{name}.json"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, str(common.ROOT / "benchmarks" / f"{name}.py"), *PROFILES[a.profile][name],
               "--workdir", str(a.workdir), "--json", str(out)]
        if name in MODEL_SCRIPTS:
            cmd += ["--device", a.device, "--dtype", a.dtype, "--shape", a.shape]
            cmd += ["--threads", str(a.threads)] if a.threads else []
        cmd += extra.get(name, [])
        commands[name] = " ".join(shlex.quote(c) for c in ["python", f"benchmarks/{name}.py", *cmd[2:]]
                                  ).replace(str(a.workdir), "WORKDIR")
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=common.env_for_children(), check=False).returncode
        seconds = time.perf_counter() - t0
        data = json.loads(out.read_text()) if out.is_file() else None
        runs.append({"script": name, "rc": rc, "seconds": seconds, "data": data})
        print(f"=== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.0f} s ===", flush=True)
    total = time.perf_counter() - started
    summary = summarize(runs, total, a)
    print("\n" + summary)
    if not a.no_docs:
        plot = a.docs.with_name("benchmarks_scaling.png")
        made = scaling_plot(runs, plot)
        write_docs(a, runs, total, commands, plot if made else None)
        print(f"wrote {a.docs}" + (f" and {plot}" if made else ""))
        default_docs = a.docs.resolve() == (common.ROOT / "docs" / "benchmarks.md").resolve()
        readme = a.readme or (common.ROOT / "README.md" if default_docs else None)
        if readme is not None and update_readme(readme, runs, total, a):
            print(f"refreshed the benchmark table in {readme}")
    sys.exit(1 if any(r["rc"] != 0 for r in runs) else 0)


# ---------------------------------------------------------------------------- report


def all_checks(runs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(r["data"]["title"], c) for r in runs if r["data"] for c in r["data"]["checks"]]


def budget_check(total: float, a: argparse.Namespace) -> dict[str, Any]:
    on_cpu = a.device == "cpu" and a.profile == "default"
    return {"name": "make bench wall time", "value": f"{total / 60:.1f} min", "target": "< 10 min on 2 CPU cores",
            "ok": (total < BUDGET_S) if on_cpu else None,
            "note": "" if on_cpu else f"profile {a.profile} on {a.device}: the budget is for the default CPU run"}


def summarize(runs: list[dict[str, Any]], total: float, a: argparse.Namespace) -> str:
    rows = [[title, c["name"], c["value"], c["target"], verdict(c["ok"])] for title, c in all_checks(runs)]
    b = budget_check(total, a)
    rows.append(["make bench", b["name"], b["value"], b["target"], verdict(b["ok"])])
    failed = [f"{r['script']} (exit {r['rc']})" for r in runs if r["rc"] != 0]
    out = common.markdown_table("Every ratio against its target", ["benchmark", "check", "result", "target", ""],
                                rows)
    times = ", ".join(f"{r['script']} {r['seconds']:.0f} s" for r in runs)
    out += f"\ntime: {times}; total {total:.0f} s\n"
    if failed:
        out += f"\nFAILED: {', '.join(failed)}\n"
    return out


def verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "MISS", None: "n/a"}[ok]


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=common.ROOT, check=True).stdout.strip()
        # What make bench itself writes (this page, its plot, the README table) is no change to the code.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs",
                                ":!README.md"], capture_output=True, text=True, cwd=common.ROOT, check=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_docs(a: argparse.Namespace, runs: list[dict[str, Any]], total: float, commands: dict[str, str],
               plot: Path | None) -> None:
    info = common.machine()
    kept = ""
    if a.docs.is_file():
        old = a.docs.read_text(encoding="utf-8")
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1].strip("\n")
    args = " ".join(shlex.quote(x) for x in sys.argv[1:])
    commit = getattr(a, "commit", None) or git_commit()
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run_all.py`); rerun it to refresh this page. Each script also",
        "runs alone (`--help` for its flags; the same flags on a GPU: `--device cuda --dtype bfloat16`).",
        "The Hugging Face and vLLM scoring engines compared: [benchmarks_engines.md](benchmarks_engines.md)",
        "(`make bench-vllm`, in the vLLM environment).",
        "",
        f"- when: {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}, commit {commit}",
        "- command: `make bench`" + (f" with `BENCH_ARGS='{args}'`" if args else "") + f" (profile {a.profile})",
        (f"- machine: {info.get('cpu')}, {info.get('cores')} cores, {info.get('memory')} memory, GPU "
         f"{info.get('gpu', 'none')}, torch threads {info.get('torch threads', '?')}"),
        "- versions: " + ", ".join(f"{k} {info[k]}" for k in ("python", "torch", "transformers", "numpy",
                                                             "matplotlib", "lm-eval", "mlflow", "wandb") if k in info),
        f"- time: {total / 60:.1f} min in all (" + ", ".join(f"{r['script']} {r['seconds']:.0f} s" for r in runs) + ")",
        "",
        summarize(runs, total, a),
    ]
    checks = all_checks(runs) + [("make bench", budget_check(total, a))]
    for heading, picked in (("Targets missed in this run", [x for x in checks if x[1]["ok"] is False]),
                            ("Targets not measured in this run",
                             [x for x in checks if x[1]["ok"] is None and x[1]["value"] == "not measured"])):
        if picked:
            lines += [f"## {heading}", ""]
            for title, c in picked:
                lines.append(f"- **{c['name']}** ({title}): {c['value']}, target {c['target']}. "
                             f"{c.get('note') or ''}".rstrip())
            lines.append("")
    if plot is not None:
        lines += ["## Scaling", "", f"![scaling]({plot.name})", ""]
    for r in runs:
        d = r["data"]
        lines.append(f"## {d['title'] if d else r['script']}")
        lines.append("")
        lines.append(f"`{commands.get(r['script'], r['script'])}` ({r['seconds']:.0f} s" +
                     (f", FAILED with exit {r['rc']})" if r["rc"] else ")"))
        lines.append("")
        if not d:
            lines += ["No results (the script failed before writing them).", ""]
            continue
        lines += [", ".join(f"{k} {v}" for k, v in d["config"].items()), ""]
        for t in d["tables"]:
            lines.append(common.markdown_table(t["title"], t["columns"], t["rows"], t.get("note", "")))
        for c in d["checks"]:
            lines.append(f"- {verdict(c['ok'])} {c['name']}: {c['value']} (target {c['target']})")
        lines.append("")
    lines += [KEEP_MARKER, ""]
    if kept:
        lines += [kept, ""]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    a.docs.parent.mkdir(parents=True, exist_ok=True)
    a.docs.write_text(text, encoding="utf-8")


def update_readme(readme: Path, runs: list[dict[str, Any]], total: float, a: argparse.Namespace) -> bool:
    """Replace the table between the README's markers with this run's ratios."""
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        return False
    rows = [[c["name"], c["value"], c["target"], verdict(c["ok"])] for _, c in all_checks(runs)]
    b = budget_check(total, a)
    rows.append([b["name"], b["value"], b["target"], verdict(b["ok"])])
    info = common.machine()
    table = common.markdown_table(
        f"make bench, {_dt.date.today().isoformat()}, profile {a.profile}, {a.device}, {info.get('cores')} cores",
        ["what", "result", "target", ""], rows,
        note="Details, the machine, the versions and the reasons for each miss: "
             "[docs/benchmarks.md](docs/benchmarks.md).")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}{README_END}{tail}", encoding="utf-8")
    return True


def scaling_plot(runs: list[dict[str, Any]], path: Path) -> bool:
    """Three panels: time against eval-set tokens (with the line), cost per 1k tokens
    against sequence length, and backfill time split by step against checkpoints."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = {r["script"]: r["data"] for r in runs if r["data"]}
    scaling = (data.get("bench_scaling") or {}).get("extra", {})
    backfill = (data.get("bench_backfill") or {}).get("extra", {})
    if not scaling and not backfill:
        return False
    fig = Figure(figsize=(14, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    if "sizes" in scaling:
        rows = scaling["sizes"]["rows"]
        x = np.array([r["tokens"] for r in rows]) / 1000
        y = np.array([r["wall"] for r in rows])
        ax1.plot(x, y, "o", color="#4C72B0", label="measured")
        xs = np.linspace(0, x.max() * 1.05, 50)
        ax1.plot(xs, scaling["sizes"]["slope"] * 1000 * xs, "--", color="gray",
                 label=f"line through 0 (R² {scaling['sizes']['r2']:.3f})")
        for r, xi, yi in zip(rows, x, y):
            ax1.annotate(f"{r['point']}", (xi, yi), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax1.set_xlabel("eval-set tokens (thousands; labels: samples)")
        ax1.set_ylabel("scoring time, s")
        ax1.set_title("Eval-set size")
        ax1.set_xlim(left=0)
        ax1.set_ylim(bottom=0)
        ax1.legend(loc="upper left", fontsize=8)
    if "lengths" in scaling:
        rows = scaling["lengths"]["rows"]
        pos = np.arange(len(rows))
        ax2.bar(pos - 0.2, [1e6 * r["wall"] / r["tokens"] for r in rows], width=0.4, color="#55A868",
                edgecolor="white", label="tokcal")
        if all("body_wall" in r for r in rows):
            ax2.bar(pos + 0.2, [1e6 * r["body_wall"] / r["tokens"] for r in rows], width=0.4, color="#8C8C8C",
                    edgecolor="white", label="model body alone")
        ax2.set_xticks(pos, [str(r["point"]) for r in rows])
        ax2.set_xlabel("tokens per sample")
        ax2.set_ylabel("ms per 1,000 tokens")
        ax2.set_title("Sequence length (flat = linear in tokens)")
        ax2.legend(loc="upper left", fontsize=8)
    if backfill.get("series"):
        series = backfill["series"]
        n = [str(s["checkpoints"]) for s in series]
        bottom = np.zeros(len(series))
        for key, color in (("load", "#4C72B0"), ("score", "#55A868"), ("log", "#C44E52"), ("other", "#8C8C8C")):
            vals = np.array([max(s[key], 0.0) for s in series])
            ax3.bar(n, vals, bottom=bottom, color=color, edgecolor="white", label=key)
            bottom += vals
        ax3.set_xlabel("checkpoints")
        ax3.set_ylabel("backfill time, s")
        rerun = backfill.get("rerun", {})
        ax3.set_title("Backfill" + (f" (rerun: {rerun['total']:.2f} s, nothing loaded)" if rerun else ""))
        ax3.legend(loc="upper left", fontsize=8)
    fig.subplots_adjust(left=0.05, right=0.99, top=0.9, bottom=0.14, wspace=0.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return True


if __name__ == "__main__":
    main()
