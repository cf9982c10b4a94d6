"""Save a checkpoint slowly, the way the Trainer does (transformers 5.x ``_save_checkpoint``):
straight into ``checkpoint-N``, the model and tokenizer files first, then the optimizer,
scheduler and RNG states, and ``trainer_state.json`` last; every file written in chunks
with pauses, so a watcher sees each one half-written. Prints one JSON line per finished file
(name, time.time()) to stdout.

    python -m tests.scripts.slow_save SRC DST PAUSE_SECONDS
"""

import json
import sys
import time
from pathlib import Path

LAST = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def order(src: Path) -> list[Path]:
    files = [p for p in sorted(src.iterdir()) if p.is_file()]
    model = [p for p in files if p.name not in LAST]
    model.sort(key=lambda p: (p.name != "config.json", p.suffix != ".safetensors", p.name))
    return model + [src / n for n in LAST if (src / n).is_file()]


if __name__ == "__main__":
    src, dst, pause = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    dst.mkdir(parents=True)
    for f in order(src):
        data = f.read_bytes()
        cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
        with open(dst / f.name, "wb") as out:
            for a, b in zip(cut, cut[1:]):
                time.sleep(pause)
                out.write(data[a:b])
                out.flush()
        print(json.dumps({"file": f.name, "done": time.time()}), flush=True)  # closed: whole on disk
