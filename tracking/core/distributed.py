"""The one gather/broadcast primitive that the callback and backfill share.

Everything tokcal does across processes goes through :class:`Dist`: with no
``torch.distributed`` process group (or a group of one) every call is the identity, so the
same code runs in one process and under ``torchrun``.

Example:
    >>> dist = Dist()
    >>> dist.gather({"rank": dist.rank})
    [{'rank': 0}]
"""

from __future__ import annotations

import os
from typing import Any


class Dist:
    """The ``torch.distributed`` group this process is in, or a single process."""

    def __init__(self) -> None:
        import torch.distributed as td

        self._td = td
        self.on = td.is_available() and td.is_initialized() and td.get_world_size() > 1
        self.rank = td.get_rank() if self.on else 0
        self.world = td.get_world_size() if self.on else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.on:
            return obj
        box = [obj]
        self._td.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.on:
            return [obj]
        out: list[Any] = [None] * self.world
        self._td.all_gather_object(out, obj)
        return out


def all_gather(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` in one process."""
    return Dist().gather(obj)


def init_distributed() -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns whether this call created the group (then :func:`destroy_distributed` ends it).
    """
    import torch
    import torch.distributed as td

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not td.is_available() or td.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group("nccl")
    else:
        td.init_process_group("gloo")
    return True


def destroy_distributed() -> None:
    """Leave the process group cleanly (a barrier first, so no rank exits mid-collective)."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.barrier()
        td.destroy_process_group()
