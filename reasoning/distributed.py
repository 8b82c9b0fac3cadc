"""The little the RL recipe needs to run as several processes (torchrun / deepspeed launcher).

With one process every helper is a no-op, so the single-process path reads the same.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def any_rank(flag: bool, world: int) -> bool:
    """True on every rank if it is true on any rank (so all ranks take the same branch)."""
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class NoLogger:
    """Ranks other than 0 do not write metrics."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass
