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
    return bool(max_over_ranks(1.0 if flag else 0.0, world)) if world > 1 else flag


def sum_over_ranks(value: float, world: int) -> float:
    """The sum of `value` over every rank (the same number on all of them)."""
    return _all_reduce(value, world, dist.ReduceOp.SUM)


def max_over_ranks(value: float, world: int) -> float:
    """The largest `value` of any rank (the same number on all of them)."""
    return _all_reduce(value, world, dist.ReduceOp.MAX)


def _all_reduce(value: float, world: int, op) -> float:
    if world == 1:
        return value
    total = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(total, op=op)
    return float(total.item())


SUMMED_METRICS = ("completions/total_tokens",)


def combine_metrics(metrics: dict, world: int) -> dict:
    """One step's metrics over all ranks: totals summed, everything else averaged.

    Ranks hold equal numbers of samples, so the mean of per-rank means is the global
    mean; for *_std metrics it is the mean of the per-rank standard deviations."""
    if world == 1:
        return metrics
    gathered: list = [None] * world
    dist.all_gather_object(gathered, metrics)
    combined = {}
    for key in dict.fromkeys(k for g in gathered for k in g):
        values = [g[key] for g in gathered if isinstance(g.get(key), (int, float))]
        if values:
            combined[key] = float(sum(values)) if key in SUMMED_METRICS else sum(values) / len(values)
    return combined


def trainer_weights(model: torch.nn.Module, zero_stage: int) -> dict[str, torch.Tensor]:
    """What the rollout workers need (the LoRA adapter, or every weight without LoRA) as full
    tensors. Under ZeRO-3 each rank holds only a shard of every parameter, so the shipped ones
    are gathered first (a collective: every rank must call this); otherwise they would be empty."""
    from reasoning.checkpoint import gathered, is_peft
    from rollouts.workers import policy_weights

    shipped = [p for p in model.parameters() if p.requires_grad] if is_peft(model) else None
    with gathered(model, zero_stage == 3, shipped):
        return policy_weights(model)


class NoLogger:
    """Ranks other than 0 do not write metrics."""

    def log(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass
