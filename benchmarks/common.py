"""What the benchmark scripts share: flags, the model and data, timing, memory, the report.

The model is a random Qwen2 of a named shape (:data:`tokcal.demo.model.QWEN2_SHAPES`)
with the real Qwen2.5 tokenizer and its 151,936-row vocabulary, saved once under
``--workdir`` so that every script, child process and lm-evaluation-harness load the same
checkpoint. The data are the synthetic accept/reject reviews of
:mod:`tokcal.data.synthetic`, lengthened with more review sentences to about
``--tokens`` tokens each.

Nothing here imports from ``tests/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

DEFAULT_WORKDIR = ROOT / ".bench"
VOCAB = 151_936


# ------------------------------------------------------------------------------- flags


def parser(doc: str, example: str) -> argparse.ArgumentParser:
    """An argument parser whose --help shows the script's docstring and an example."""
    return argparse.ArgumentParser(
        description=doc, epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_model_args(ap: argparse.ArgumentParser, *, samples: int, tokens: int, max_tokens: int = 4096,
                   shape: str = "tiny") -> None:
    """The flags every model benchmark takes (the same on a CPU and a GPU)."""
    from tokcal.demo.model import QWEN2_SHAPES

    g = ap.add_argument_group("model and data")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights and activations (default: float32)")
    g.add_argument("--shape", default=shape, choices=list(QWEN2_SHAPES),
                   help="model shape: tiny (CPU), tiny-h64 (as small, heads of 64 as vLLM's CPU attention needs) "
                        f"or Qwen2.5-3B's (GPU); vocabulary 151,936 in each (default: {shape})")
    g.add_argument("--samples", type=int, default=samples, help=f"eval samples (default: {samples})")
    g.add_argument("--tokens", type=int, default=tokens, help=f"about this many tokens per sample (default: {tokens})")
    g.add_argument("--max-tokens", type=int, default=max_tokens,
                   help=f"padded tokens per batch, the same batches for every variant (default: {max_tokens})")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_output_args(ap)


def add_output_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("output")
    g.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help=f"checkpoints and scratch files (default: {DEFAULT_WORKDIR.relative_to(ROOT)}/)")
    g.add_argument("--json", type=Path, default=None, help="also write the results here (benchmarks/run_all.py reads it)")


def setup_torch(a: argparse.Namespace) -> Any:
    """Threads and a check that the device exists; returns ``torch``."""
    import torch

    if getattr(a, "threads", None):
        torch.set_num_threads(a.threads)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"expected a CUDA device for --device {a.device}, got none (torch {torch.__version__})")
    return torch


# ----------------------------------------------------------------------- model and data


def checkpoint(workdir: Path, *, shape: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """The saved random Qwen2 checkpoint of this shape, with the real Qwen2.5 tokenizer
    (built once per workdir; a half-written one is never used)."""
    path = Path(workdir) / f"qwen2-{shape}-{dtype}-seed{seed}"
    if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
        return path
    from tokcal.demo.model import build_qwen2
    from tokcal.demo.qwen import qwen25_tokenizer
    from tokcal.demo.tokenizer import save_tokenizer

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    device = "cuda" if not shape.startswith("tiny") and _cuda() else "cpu"
    model = build_qwen2(shape, seed=seed, dtype=dtype, device=device)
    model.save_pretrained(str(tmp), safe_serialization=True)
    save_tokenizer(qwen25_tokenizer(), tmp)
    del model
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load(path: Path, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """The checkpoint's model (eval mode, on ``device``) and tokenizer, offline."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the benchmark's output
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype), local_files_only=True)
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model.to(device).eval(), tok


def review_records(n: int, tokens: int, tokenizer: Any, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` synthetic reviews of about ``tokens`` tokens each (0.9x to 1.1x, so batches pad
    as real ones do): :func:`tokcal.data.synthetic.review_records` with more sentences."""
    from tokcal.data import synthetic

    records = synthetic.review_records(n, seed=seed)
    rng = random.Random(seed + 1)
    words = synthetic.POSITIVE + synthetic.NEGATIVE
    pool = [f" The {rng.choice(synthetic.NEUTRAL)} is {rng.choice(words)}." for _ in range(512)]
    pool_len = [len(ids) for ids in tokenizer(pool, add_special_tokens=False)["input_ids"]]
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    base = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    for r, have in zip(records, base):
        need = int(tokens * rng.uniform(0.9, 1.1)) - have
        extra = []
        while need > 0:
            i = rng.randrange(len(pool))
            extra.append(pool[i])
            need -= pool_len[i]
        r["messages"][1]["content"] += "".join(extra)
    return records


def review_examples(n: int, tokens: int, tokenizer: Any, *, seed: int = 0) -> list[Any]:
    """:func:`review_records` tokenised as SFT does (labels on the assistant turn)."""
    from tokcal.data.conversation import tokenize_records

    return tokenize_records(review_records(n, tokens, tokenizer, seed=seed), tokenizer)


def batches(examples: Sequence[Any], tokenizer: Any, max_tokens: int) -> list[dict[str, Any]]:
    """tokcal's length-sorted, right-padded batches: the same for every variant."""
    from tokcal.data.batches import make_batches, pad_id_of

    return make_batches(examples, pad_id_of(tokenizer), max_tokens=max_tokens)


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------- time and memory


@dataclass
class Clock:
    """Wall and process CPU seconds of a ``with`` block (CPU time is disturbed less by
    other load on the machine)."""

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def clock(device: str = "cpu") -> Iterator[Clock]:
    c = Clock()
    _sync(device)
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield c
    finally:
        _sync(device)
        c.wall, c.cpu = time.perf_counter() - w0, time.process_time() - c0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float:
    """The resident set now."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else float("nan")


def peak_rss_mib() -> float:
    """The peak resident set of this process (since the last :func:`reset_peak_rss`)."""
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kib = kib // 1024 if sys.platform == "darwin" else kib
    return kib / 1024


def reset_peak_rss() -> bool:
    """Reset the peak resident set to the current one (Linux ``clear_refs``); ``False``
    where that is not possible (then the peak includes what came before)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    """Peak memory of a block over its start: host RSS, and the device's allocations."""

    host_mib: float = float("nan")
    device_mib: float = float("nan")
    whole_process_mib: float = float("nan")


@contextmanager
def peak_memory(device: str = "cpu") -> Iterator[PeakMemory]:
    import torch

    m = PeakMemory()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        dev0 = torch.cuda.memory_allocated()
    reset_peak_rss()
    host0 = rss_mib()
    try:
        yield m
    finally:
        if cuda:
            torch.cuda.synchronize()
            m.device_mib = (torch.cuda.max_memory_allocated() - dev0) / 2**20
        m.host_mib = peak_rss_mib() - host0
        m.whole_process_mib = peak_rss_mib()


# ----------------------------------------------------------------------------- report


@dataclass
class Check:
    name: str
    value: str
    target: str
    ok: bool | None  # None: not measured in this run
    note: str = ""


@dataclass
class Report:
    """Tables and target checks of one script, printed as Markdown and kept as JSON."""

    script: str
    title: str
    config: dict[str, Any] = field(default_factory=dict)
    tables: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        print(f"\n## {self.title}\n")
        print(", ".join(f"{k} {v}" for k, v in self.config.items()) + "\n")

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> None:
        rows = [[_fmt(x) for x in r] for r in rows]
        self.tables.append({"title": title, "columns": list(columns), "rows": rows, "note": note})
        print(markdown_table(title, columns, rows, note))

    def check(self, name: str, value: str, target: str, ok: bool | None, note: str = "") -> None:
        c = Check(name, value, target, ok, note)
        self.checks.append(c)
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[ok]
        print(f"{verdict}  {name}: {value} (target {target})" + (f" - {note}" if note and ok is not True else ""))

    def write(self, path: Path | None) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"script": self.script, "title": self.title, "config": self.config, "tables": self.tables,
                "checks": [c.__dict__ for c in self.checks], "extra": self.extra}
        path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
    return str(x)


def markdown_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], note: str = "") -> str:
    widths = [max(len(str(c)), *(len(str(r[i])) for r in rows)) if rows else len(str(c)) for i, c in enumerate(columns)]
    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [f"**{title}**", "", line(columns), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in rows]
    if note:
        out += ["", note]
    return "\n".join(out) + "\n"


def machine() -> dict[str, str]:
    """What ran the benchmark: CPU, cores, memory, GPU, and the versions that matter."""
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    info = {"cpu": cpu, "cores": str(os.cpu_count()), "memory": mem, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "numpy", "matplotlib", "lm-eval", "mlflow", "wandb"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "not installed"
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        info["torch threads"] = str(torch.get_num_threads())
    except ImportError:
        pass
    return info


def env_for_children() -> dict[str, str]:
    """No model hub, no telemetry, this tree's packages first."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1",
               TOKENIZERS_PARALLELISM="false", WANDB_SILENT="true", MLFLOW_ENABLE_ASYNC_LOGGING="false")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
