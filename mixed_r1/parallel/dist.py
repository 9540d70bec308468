"""torch.distributed helpers every multi-rank path uses: the main rank, a barrier, and one Python
object sent from a rank to all. Each is the identity (or a no-op) in a process without a process
group, so single-process code calls them unconditionally.
"""
from __future__ import annotations

from typing import Any

import torch.distributed as dist


def is_main_rank() -> bool:
    """Global rank 0 (or a process without torch.distributed)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from global rank ``src`` on every rank (pickled); identity without a process group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


__all__ = ["barrier", "broadcast_object", "is_main_rank"]
