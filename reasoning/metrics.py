"""Metrics to metrics.jsonl (always), TensorBoard (by default) and wandb (when asked and installed)."""

from __future__ import annotations

import json
import math
import os
import time

import torch

from reasoning.evaluate import answer_length


class MetricsLogger:
    def __init__(self, run_dir: str, tensorboard: bool = True, wandb: bool = False, run_name: str = "run",
                 config: dict | None = None, append: bool = True):
        """`append=False` starts metrics.jsonl afresh (a new run); resumed runs append."""
        os.makedirs(run_dir, exist_ok=True)
        self._file = open(os.path.join(run_dir, "metrics.jsonl"), "a" if append else "w")
        self._tb = None
        self._wandb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                print("logging.wandb is true but wandb is not installed; logging to TensorBoard only")
            else:
                self._wandb = wandb_lib.init(name=run_name, dir=run_dir, config=config or {})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        record = {"step": step, "time": time.time(),
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def rollout_metrics(trajectories, stop: tuple[int, ...]) -> dict[str, float]:
    """Completion lengths and denoising statistics of a step's rollouts (the metric names docs/training.md lists)."""
    lengths = [answer_length(torch.as_tensor(t.final_tokens), stop) for t in trajectories]
    steps = [t.num_steps for t in trajectories]
    commits = [int(t.commits.sum()) for t in trajectories]
    n = max(len(trajectories), 1)
    return {
        "completions/mean_length": sum(lengths) / n,
        "completions/total_tokens": float(sum(lengths)),
        "diffusion/steps": sum(steps) / n,
        "diffusion/forward_passes": sum(t.forward_passes for t in trajectories) / n,
        "diffusion/tokens_per_step": sum(commits) / max(sum(steps), 1),
        "diffusion/remasks": sum(t.num_remasks for t in trajectories) / n,
    }
