"""One RL update: `inner_steps` optimizer steps over a batch of rollouts, through an objective.

The trainer loop (reasoning/rl.py) calls `update(learner, batch, generator)` once per RL step and
gets an `UpdateResult` (whether the weights changed, the metrics, the timings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import numpy as np
import torch

from reasoning.distributed import any_rank, sum_over_ranks
from reasoning.engine import engine_step
from reasoning.objectives import Objective, StepBatch
from rollouts import DiffusionPolicy

if TYPE_CHECKING:  # imported where the engine is built (reasoning/engine.py), not on every import
    from deepspeed import DeepSpeedEngine


@dataclass(frozen=True)
class Learner:
    """What trains: the DeepSpeed engine and its optimizer, the policy adapter over the engine's
    model, the objective, and how an update is split (micro-batches, inner steps, ranks)."""

    engine: "DeepSpeedEngine"
    optimizer: torch.optim.Optimizer
    policy: DiffusionPolicy
    objective: Objective
    micro_batches: int  # accumulated backward passes per optimizer step
    inner_steps: int  # μ: optimizer steps per batch
    lora: bool  # the reference (KL) is the model with its adapter disabled
    world: int = 1


@dataclass
class UpdateResult:
    """What an update did: whether any optimizer step changed the weights, its metrics and timings."""

    updated: bool
    metrics: dict[str, float] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)  # logp (old/reference log-probs), update


def update(learner: Learner, batch: StepBatch, generator: torch.Generator) -> UpdateResult:
    """`inner_steps` optimizer steps over `batch`; each = `micro_batches` accumulated backward passes.

    With several processes every rank makes the same number of backward/step calls (empty
    micro-batches contribute a zero loss) and a skip is agreed by all ranks."""
    engine, optimizer, policy, objective = learner.engine, learner.optimizer, learner.policy, learner.objective
    micro_batches, inner_steps, world = learner.micro_batches, learner.inner_steps, learner.world
    totals: dict[str, float] = {}
    timing: dict[str, float] = {}
    if not any_rank(bool(batch.trajectories) or objective.steps_without_signal(batch), world):  # nothing to learn
        return UpdateResult(False, {"skipped_steps": 0.0, "train/samples": 0.0})
    model = engine.module
    t0 = time.perf_counter()
    reference = model.disable_adapter() if learner.lora and objective.s.kl_coef > 0 else None
    # dropout off: replay must see the sampler's function. transformers only checkpoints activations
    # in train mode, so with gradient checkpointing we stay in train mode (DLM configs have dropout 0).
    if getattr(model, "is_gradient_checkpointing", False):
        engine.train()
    else:
        engine.eval()
    prep = objective.prepare(policy, batch, generator, reference, inner_steps) if batch.trajectories else None
    timing["logp"] = time.perf_counter() - t0
    # one normalisation for every objective: the units of the whole update, over all ranks; DeepSpeed
    # averages gradients over ranks, so each rank's loss is scaled by the world size to make it a sum
    units = max(sum_over_ranks(objective.units(batch, prep) if batch.trajectories else 0, world), 1)
    chunks = [c.tolist() for c in np.array_split(np.arange(len(batch.trajectories)), micro_batches)]
    t0 = time.perf_counter()
    skipped, grad_norm, first_dev = 0, float("nan"), 0.0
    for inner in range(inner_steps):
        bad = False
        for k, chunk in enumerate(chunks):
            if chunk:
                loss, stats = objective.loss(policy, batch, prep, chunk, units / world, inner)
                if not torch.isfinite(loss):
                    bad, loss = True, zero_loss(model)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                if inner == 0 and stats.ratio_max_abs_dev is not None:
                    first_dev = max(first_dev, stats.ratio_max_abs_dev)
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
            else:
                loss = zero_loss(model)
            engine.backward(loss, scale_wrt_gas=False)  # already normalised by the batch's units
            if k == len(chunks) - 1:
                bad = any_rank(bad or not grads_finite(model), world)
                if bad:  # skip: zero gradients and a zero learning rate leave the weights as they are
                    for p in model.parameters():
                        if p.grad is not None:
                            p.grad.zero_()
                    for group in optimizer.param_groups:
                        group["lr"] = 0.0
                    skipped += 1
            norm = engine_step(engine)
            if norm is not None:
                grad_norm = norm
    timing["update"] = time.perf_counter() - t0
    n_units = max(totals.get("units", 0.0), 1.0)
    metrics = {
        "loss": totals.get("loss", 0.0) / inner_steps, "grad_norm": grad_norm, "skipped_steps": float(skipped),
        "entropy": totals.get("entropy_sum", 0.0) / n_units,
        "train/samples": float(len(batch.trajectories)), "train/units": float(units),
    }
    if "ratio_sum" in totals:  # objectives with a PPO ratio (SPG and wd1 have none)
        metrics.update({
            "ratio_mean": totals["ratio_sum"] / n_units, "ratio/first_inner_max_dev": first_dev,
            "clip_ratio/low_mean": totals["clip_low"] / n_units, "clip_ratio/high_mean": totals["clip_high"] / n_units,
            "clip_ratio/region_mean": (totals["clip_low"] + totals["clip_high"]) / n_units})
    if "kl_sum" in totals:
        metrics["kl"] = totals["kl_sum"] / n_units
    if "stale_units" in totals:  # decoupled PPO on stale samples (rollout.async)
        metrics["async/importance_weight_mean"] = totals["importance_weight_sum"] / totals["stale_units"]
        metrics["async/importance_masked_frac"] = totals["importance_masked"] / totals["stale_units"]
        # mean |log π_prox − log π_behav| over those units: staleness plus any KV-cache approximation
        metrics["rollout/behaviour_replay_gap"] = totals["behaviour_gap_sum"] / totals["stale_units"]
    return UpdateResult(skipped < inner_steps, metrics, timing)


def zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss of exactly 0 that still touches every trainable parameter (keeps DeepSpeed's
    gradient accumulation in step when a micro-batch is empty or its loss is skipped)."""
    return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), torch.zeros(()))


def grads_finite(model: torch.nn.Module) -> bool:
    """Only checkable where gradients live on the parameters (ZeRO-0); ZeRO-2/3 partition them."""
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
