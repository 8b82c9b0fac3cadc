"""The state of one RL run and what it writes and reads back: `RLRun` (everything the loop works
with), the budget the lr schedule reads, `restore` from a checkpoint, `checkpoint` (atomic, every
rank's optimizer shard and RNG), and `finish` (the summary table and pictures). The loop itself is
reasoning/rl.py."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from reasoning.batches import PromptSchedule
from reasoning.checkpoint import (checkpoint_name, prune_checkpoints, read_state, save_checkpoint,
                                  truncate_metrics, writing)
from reasoning.config import Config
from reasoning.distributed import barrier
from reasoning.engine import zero_stage
from reasoning.groups import GroupCollector
from reasoning.metrics import MetricsLogger
from rewards import RewardRunner
from rollouts.workers import RolloutGroup


@dataclass
class RLRun:
    """Everything the loop works with: built by `setup`, advanced by `loop`, summed up by `finish`."""

    cfg: Config
    task: object
    train: object  # datasets.Dataset
    test: object
    tokenizer: object
    engine: object
    optimizer: object
    policy: object
    objective: object
    rewarder: RewardRunner
    logger: object
    schedule: PromptSchedule
    base_dir: str
    micro_batches: int
    rank: int = 0
    world: int = 1
    group: RolloutGroup | None = None  # rollout workers (on rank 0 only when Ray serves several ranks)
    source: object = None  # SyncRollouts | AsyncRollouts (reasoning/batches.py)
    collector: GroupCollector | None = None  # scores groups; hints and dynamic sampling (reasoning/groups.py)
    step: int = 0  # the last finished step
    version: int = 0  # policy_version of the trainer's weights
    trained_s: float = 0.0  # training wall time over the whole run (evals excluded)
    resumed_from: str | None = None
    eval_metrics: dict = field(default_factory=dict)
    before: float | None = None
    staleness: Counter = field(default_factory=Counter)  # policy versions behind -> trajectories
    groups: Counter = field(default_factory=Counter)  # "sampled" / "dropped" groups
    origin: float = field(default_factory=time.perf_counter)
    decoding: object = field(init=False)  # the rollout block's DecodingConfig, built once

    def __post_init__(self) -> None:
        self.decoding = self.cfg.rollout_decoding()

    def clock(self) -> float:
        """Seconds since the loop's start (the timeline of rollout / update / sync)."""
        return time.perf_counter() - self.origin

    @property
    def lora(self) -> bool:
        return self.cfg.model.lora.enabled

    @property
    def trainer_samples(self) -> bool:
        """The waiting trainer samples what is left of the next batch (in-process async rollouts)."""
        a = self.cfg.rollout.async_
        return a.enabled and a.trainer_samples and a.max_staleness >= 1 and not self.cfg.ray.enabled and self.world == 1

    @property
    def loop_kind(self) -> str:
        a = self.cfg.rollout.async_
        if not a.enabled:
            return "synchronous"
        return f"async, max_staleness {a.max_staleness}" + (", trainer samples" if self.trainer_samples else "")

    @property
    def ray_serves_all_ranks(self) -> bool:
        """Ray workers sample every rank's prompts on rank 0, which hands each rank its share."""
        return self.cfg.ray.enabled and self.world > 1


def budget_used(run: RLRun) -> float:
    """How much of the run's budget is spent, as the lr scheduler sees it right after an optimizer
    step of step run.step + 1: steps, or training seconds when those end the run first."""
    tr = run.cfg.trainer
    return max((run.step + 1) / tr.steps, run.trained_s / tr.max_seconds if tr.max_seconds else 0.0)


# --- restore: the newest checkpoint's weights, optimizer, RNG and counters --------------------------

def restore(run: RLRun, checkpoint: str | None) -> None:
    if checkpoint is not None:
        state = read_state(checkpoint)
        run.engine.load_checkpoint(os.path.join(checkpoint, "ds"), tag="state", load_module_strict=False,
                                   load_optimizer_states=True, load_lr_scheduler_states=True)
        rng = torch.load(os.path.join(checkpoint, "ds", f"rng_rank{run.rank}.pt"), weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        run.step, run.version = state["step"], state["policy_version"]
        run.trained_s = state.get("trained_s", 0.0)  # max_seconds is a budget for the whole run
        run.staleness.update({int(k): v for k, v in state.get("staleness", {}).items()})
        run.groups.update(state.get("groups", {}))
        run.resumed_from = checkpoint
        if run.rank == 0:
            truncate_metrics(run.cfg.run_dir, run.step)
        print(f"resumed from {checkpoint} at step {run.step}")
    if run.rank == 0:
        cfg = run.cfg
        run.logger = MetricsLogger(cfg.run_dir, cfg.logging.tensorboard, cfg.logging.wandb, cfg.name,
                                   append=checkpoint is not None)


def checkpoint(run: RLRun) -> str:
    """Every rank writes its optimizer shard and RNG to a staging dir; rank 0 then builds the
    checkpoint around it in a temp dir and renames it into place (trainer_state.json last)."""
    with writing(os.path.join(run.cfg.run_dir, "checkpoints")):
        return _checkpoint(run)


def _checkpoint(run: RLRun) -> str:
    cfg, step = run.cfg, run.step
    staging = os.path.join(cfg.run_dir, "checkpoints", f".ds-{checkpoint_name(step)}")
    run.engine.save_checkpoint(staging, tag="state", save_latest=False, exclude_frozen_parameters=run.lora)
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               os.path.join(staging, f"rng_rank{run.rank}.pt"))
    barrier()
    path = os.path.join(cfg.run_dir, "checkpoints", checkpoint_name(step))
    if run.rank == 0:
        epoch, cursor = run.schedule.position(step)
        path = save_checkpoint(cfg.run_dir, step, run.engine.module, run.tokenizer, {
            "base_model": run.base_dir, "policy_version": run.version, "data_epoch": epoch, "data_cursor": cursor,
            "metrics": run.eval_metrics, "task": run.task.name, "objective": cfg.trainer.objective,
            "world_size": run.world, "trained_s": run.trained_s, "staleness": dict(run.staleness),
            "groups": dict(run.groups),
        }, zero3=zero_stage(run.engine) == 3, extra=lambda tmp: shutil.move(staging, os.path.join(tmp, "ds")))
        prune_checkpoints(cfg.run_dir, cfg.trainer.keep_checkpoints)
    barrier()
    return path


# --- finish: final eval and checkpoint, summary table, pictures --------------------------------------


def finish(run: RLRun, started: float) -> dict:
    cfg, task = run.cfg, run.task
    after = run.eval_metrics.get(f"eval/{task.name}/acc")
    summary = {"task": task.name, "steps": run.step, "policy_version": run.version, "trained_s": run.trained_s,
               "staleness_histogram": {str(k): v for k, v in sorted(run.staleness.items())},
               "dropped_fraction": run.groups["dropped"] / max(run.groups["sampled"], 1), **run.eval_metrics}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if run.before is not None and after is not None:
        before = run.before
        summary.update(before=before, after=after, gain_pts=round(100 * (after - before), 1))
        table = (f"| {task.name} held-out accuracy ({min(cfg.eval.n, len(run.test))} problems) | value |\n"
                 f"|---|---|\n| before RL (start checkpoint) | {100 * before:.1f} % |\n"
                 f"| after RL ({run.step} steps, {cfg.trainer.objective}, {run.loop_kind}) | {100 * after:.1f} % |\n"
                 f"| gain | {100 * (after - before):+.1f} pts |\n| wall time | {summary['seconds']:.0f} s |\n")
        print("\n" + table)
        if run.rank == 0:
            with open(os.path.join(cfg.run_dir, "summary.md"), "w") as fh:
                fh.write(table)
    if run.rank == 0:
        with open(os.path.join(cfg.run_dir, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=1)
        from reasoning.show import draw_run

        draw_run(cfg.run_dir, run.tokenizer)
    return summary
