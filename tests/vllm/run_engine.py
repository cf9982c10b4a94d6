"""Score one or more checkpoints with the vLLM engine, as ``tokcal extract`` does, and write
what the tests compare: per-decision records, the prompt tokens vLLM echoed, and the engine's
processes and memory while open and after it closed.

usage: python tests/vllm/run_engine.py OUT.json DATA CHECKPOINT [CHECKPOINT ...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def tree_rss(proc) -> int:
    """Resident memory of a process and its children, bytes."""
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except Exception:  # a child gone between the listing and the read
            pass
    return total


def main() -> None:
    import psutil

    from tokcal.core.spec import DecisionSpec
    from tokcal.data.sources import as_source
    from tokcal.engines import get_engine
    from tokcal.engines.base import score_with
    from tokcal.jobs.checkpoints import checkpoint_tokenizer

    out_path, data, checkpoints = Path(sys.argv[1]), sys.argv[2], [Path(p) for p in sys.argv[3:]]
    me = psutil.Process()
    engine = get_engine("vllm", {"enforce_eager": True})
    spec = DecisionSpec()
    source = as_source(data)
    source.check()
    result = {"baseline_rss": tree_rss(me), "checkpoints": []}
    for ckpt in checkpoints:
        tok = checkpoint_tokenizer(ckpt)
        examples = source.examples(tok)
        engine.check(ckpt, examples, source=source)
        t0 = time.perf_counter()
        with engine.open(ckpt, source=source) as session:
            started = time.perf_counter() - t0
            echoed: list[list[int]] = []
            generate = session.llm.generate

            def recording(prompts, params, **kw):
                outs = generate(prompts, params, **kw)
                echoed.extend(list(o.prompt_token_ids) for o in outs)
                return outs

            session.llm.generate = recording
            t1 = time.perf_counter()
            scores = score_with(session, examples, spec, source=source, mode="generate", max_new_tokens=48,
                                progress=False)
            scored = time.perf_counter() - t1
            open_rss = tree_rss(me)
            open_children = len(me.children(recursive=True))
        time.sleep(1.0)
        result["checkpoints"].append({
            "checkpoint": str(ckpt), "records": scores.records(), "scalars": scores.metrics().scalars,
            "echoed": echoed, "start_s": started, "score_s": scored, "open_rss": open_rss,
            "open_children": open_children, "closed_rss": tree_rss(me),
            "closed_children": [(p.name(), p.status()) for p in me.children(recursive=True)],
        })
    out_path.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main()
