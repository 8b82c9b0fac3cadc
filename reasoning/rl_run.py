"""The state of one RL run and what it writes and reads back: `RLRun` (everything the loop works
with, fixed after setup), `Progress` (what changes, and what a checkpoint saves), the `Budget` the
lr schedule reads, `restore` from a checkpoint, `checkpoint` (atomic, every rank's optimizer shard
and RNG), and `finish` (the summary table and pictures). The loop itself is reasoning/rl.py."""

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

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from reasoning.rollout_sources import AsyncRollouts, PromptSchedule, SyncRollouts
from reasoning.checkpoint import (checkpoint_name, prune_checkpoints, read_state, save_checkpoint,
                                  truncate_metrics, writing)
from reasoning.config import Config
from reasoning.distributed import NoLogger, barrier
from reasoning.engine import zero_stage
from reasoning.groups import Group, GroupCollector
from reasoning.metrics import MetricsLogger
from reasoning.tasks.base import Task
from reasoning.update import Learner
from rewards import RewardRunner
from rollouts import DecodingConfig
from rollouts.workers import WorkerPool


@dataclass
class Progress:
    """How far the run has come: exactly what a checkpoint saves and `restore` reads back."""

    step: int = 0  # the last finished step
    version: int = 0  # policy_version of the trainer's weights
    trained_s: float = 0.0  # training wall time over the whole run (evals excluded)
    staleness: Counter = field(default_factory=Counter)  # policy versions behind -> trajectories
    groups: Counter = field(default_factory=Counter)  # "sampled" / "dropped" groups
    eval_metrics: dict = field(default_factory=dict)  # the latest evaluation
    before: float | None = None  # held-out accuracy at step 0
    resumed_from: str | None = None


@dataclass(frozen=True)
class Budget:
    """When the run ends: `steps`, or `max_seconds` of training time when that comes first. The lr
    schedule reads `used` — it exists before the engine, so the engine can be built with it."""

    steps: int
    max_seconds: float = 0.0

    def used(self, progress: Progress) -> float:
        """The share spent, as the lr scheduler sees it right after an optimizer step of step
        progress.step + 1."""
        return max((progress.step + 1) / self.steps,
                   progress.trained_s / self.max_seconds if self.max_seconds else 0.0)


@dataclass
class RLRun:
    """Everything the loop works with. Built by `setup` and fixed from then on (the rollout source,
    group collector and logger are attached once, at the start), except `progress`."""

    cfg: Config
    task: Task
    train: Dataset
    test: Dataset
    tokenizer: PreTrainedTokenizerBase
    learner: Learner
    rewarder: RewardRunner
    schedule: PromptSchedule
    base_dir: str  # the base model's directory, which the workers load
    progress: Progress
    rank: int = 0
    world: int = 1
    logger: MetricsLogger | NoLogger = field(default_factory=NoLogger)
    workers: WorkerPool | None = None  # rollout workers (on rank 0 only when Ray serves several ranks)
    source: SyncRollouts | AsyncRollouts | None = None  # where each step's rollouts come from
    collector: GroupCollector | None = None  # scores groups; hints and dynamic sampling (reasoning/groups.py)
    origin: float = field(default_factory=time.perf_counter)
    decoding: DecodingConfig = field(init=False)  # the rollout block's DecodingConfig, built once

    def __post_init__(self) -> None:
        record = self.cfg.rollout.record_predictions or self.cfg.rewards.intermediate.enabled
        self.decoding = self.cfg.rollout_decoding(record_predictions=record)

    @property
    def step_level_credit(self) -> bool:
        """Advantages per denoising step (branches or intermediate rewards; reasoning/credit.py)."""
        return self.cfg.rollout.branching.enabled or self.cfg.rewards.intermediate.enabled

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


# --- restore: the newest checkpoint's weights, optimizer, RNG and counters --------------------------

def restore(run: RLRun, checkpoint: str | None) -> None:
    if checkpoint is not None:
        state = read_state(checkpoint)
        run.learner.engine.load_checkpoint(os.path.join(checkpoint, "ds"), tag="state", load_module_strict=False,
                                   load_optimizer_states=True, load_lr_scheduler_states=True)
        rng = torch.load(os.path.join(checkpoint, "ds", f"rng_rank{run.rank}.pt"), weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        progress = run.progress
        progress.step, progress.version = state["step"], state["policy_version"]
        progress.trained_s = state.get("trained_s", 0.0)  # max_seconds is a budget for the whole run
        progress.staleness.update({int(k): v for k, v in state.get("staleness", {}).items()})
        progress.groups.update(state.get("groups", {}))
        progress.resumed_from = checkpoint
        if run.rank == 0:
            truncate_metrics(run.cfg.run_dir, run.progress.step)
        print(f"resumed from {checkpoint} at step {run.progress.step}")
    if run.rank == 0:
        cfg = run.cfg
        run.logger = MetricsLogger(cfg.run_dir, cfg.logging.tensorboard, cfg.logging.wandb, cfg.name,
                                   append=checkpoint is not None)


def checkpoint(run: RLRun) -> str:
    """Every rank writes its optimizer shard and RNG to a staging dir; rank 0 then builds the
    checkpoint around it in a temp dir and renames it into place (trainer_state.json last)."""
    root = os.path.join(run.cfg.run_dir, "checkpoints")
    try:
        with writing(root):
            return _checkpoint(run)
    except BaseException:  # a full disk or a kill: no half-written staging dir is left behind
        shutil.rmtree(os.path.join(root, f".ds-{checkpoint_name(run.progress.step)}"), ignore_errors=True)
        raise


def _checkpoint(run: RLRun) -> str:
    cfg, progress, step = run.cfg, run.progress, run.progress.step
    staging = os.path.join(cfg.run_dir, "checkpoints", f".ds-{checkpoint_name(step)}")
    run.learner.engine.save_checkpoint(staging, tag="state", save_latest=False, exclude_frozen_parameters=run.lora)
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
               os.path.join(staging, f"rng_rank{run.rank}.pt"))
    barrier()
    path = os.path.join(cfg.run_dir, "checkpoints", checkpoint_name(step))
    if run.rank == 0:
        epoch, cursor = run.schedule.position(step)
        path = save_checkpoint(cfg.run_dir, step, run.learner.engine.module, run.tokenizer, {
            "base_model": run.base_dir, "policy_version": progress.version, "data_epoch": epoch, "data_cursor": cursor,
            "metrics": progress.eval_metrics, "task": run.task.name, "objective": cfg.trainer.objective_name,
            "world_size": run.world, "trained_s": progress.trained_s, "staleness": dict(progress.staleness),
            "groups": dict(progress.groups),
        }, zero3=zero_stage(run.learner.engine) == 3, extra=lambda tmp: shutil.move(staging, os.path.join(tmp, "ds")))
        prune_checkpoints(cfg.run_dir, cfg.trainer.keep_checkpoints)
    barrier()
    return path


# --- finish: final eval and checkpoint, summary table, pictures --------------------------------------


def finish(run: RLRun, started: float) -> dict:
    cfg, task = run.cfg, run.task
    progress = run.progress
    after = progress.eval_metrics.get(f"eval/{task.name}/acc")
    summary = {"task": task.name, "steps": progress.step, "policy_version": progress.version,
               "trained_s": progress.trained_s,
               "staleness_histogram": {str(k): v for k, v in sorted(progress.staleness.items())},
               "dropped_fraction": progress.groups["dropped"] / max(progress.groups["sampled"], 1),
               **progress.eval_metrics}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if progress.before is not None and after is not None:
        before = progress.before
        summary.update(before=before, after=after, gain_pts=round(100 * (after - before), 1))
        table = (f"| {task.name} held-out accuracy ({min(cfg.eval.n, len(run.test))} problems) | value |\n"
                 f"|---|---|\n| before RL (start checkpoint) | {100 * before:.1f} % |\n"
                 f"| after RL ({progress.step} steps, {cfg.trainer.objective_name}, {run.loop_kind}) | {100 * after:.1f} % |\n"
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


# --- staleness: which sampled groups are too old to train (invariant 8) -------------------------------

def drop_stale(run: RLRun, groups: list[Group]) -> tuple[list[Group], dict[str, float]]:
    """Drop every group with an answer more than `rollout.async.max_staleness` policy versions
    behind the trainer (invariant 8); the rest are trained, stale ones importance-weighted."""
    progress = run.progress
    limit = run.cfg.rollout.async_.max_staleness if run.cfg.rollout.async_.enabled else 0
    behind = []
    for group in groups:
        lag = [progress.version - t.policy_version for t in group.trajectories]
        group.staleness = max(lag)
        behind.extend(lag)
    progress.staleness.update(behind)
    kept = [g for g in groups if g.staleness <= limit]
    dropped = len(groups) - len(kept)
    progress.groups.update(sampled=len(groups), dropped=dropped)
    stats = {"async/staleness_mean": sum(behind) / max(len(behind), 1), "async/staleness_max": float(max(behind)),
             "async/dropped_groups": float(dropped),
             "async/dropped_fraction": progress.groups["dropped"] / max(progress.groups["sampled"], 1)}
    return kept, stats
