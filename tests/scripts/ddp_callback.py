"""Run under torchrun: a tiny Trainer run with the callback on several CPU processes (gloo)."""

import sys
from pathlib import Path

from tokcal import DecisionTrackingCallback
from tests.helpers.training import train_tiny
from tokcal.core.distributed import destroy_distributed

if __name__ == "__main__":
    base, out = Path(sys.argv[1]), Path(sys.argv[2])
    train_tiny(base, out, callbacks=[DecisionTrackingCallback(backend="local")], ddp_backend="gloo")
    destroy_distributed()  # the Trainer leaves the group to us; exiting with it alive can abort in gloo
