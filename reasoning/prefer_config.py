"""The `prefer` config block: preference training (`dlmrl prefer`, reasoning/prefer.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from reasoning.schema import ConfigError


@dataclass
class PreferConfig:
    """DPO on ELBO estimates for masked diffusion LMs; VRPO (LLaDA 1.5) by default."""

    # vrpo: stratified timesteps, one mask each, the same masks for the policy and the reference
    # (LLaDA 1.5's variance reduction, as DARE's port computes it); dpo: the naive estimate, the
    # policy and the reference each draw their own independent timesteps and masks
    estimator: Literal["vrpo", "dpo"] = "vrpo"
    beta: float = 0.2  # DPO's β, on the ELBO / L scale (DARE's VRPO default)
    draws: int = 4  # ELBO draws (timesteps, one mask each) per answer, per model
    # TRL's DPO format (prompt / chosen / rejected; plain strings or conversations) as JSONL / JSON /
    # parquet / CSV. null: pairs built from `data.task` (chosen = its reference answer, rejected = the
    # reference of another problem that the task's scorer marks wrong)
    train_file: str | None = None
    test_file: str | None = None  # held-out pairs; null: the first data.test_size rows of train_file
    steps: int = 200
    batch_size: int = 16  # pairs per optimizer step
    micro_batch_size: int | None = None  # pairs per forward/backward (None = batch_size)
    lr: float = 5e-7
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    deepspeed: str = "zero0"
    eval_every: int = 50  # held-out preference accuracy every N steps (0 = only at the start and end)
    eval_n: int = 256  # held-out pairs per evaluation
    eval_draws: int = 16  # ELBO draws per answer at evaluation (a fixed seed: every evaluation sees the same masks)
    log_every: int = 10
    checkpoint_every: int = 50  # 0 = only at the end
    keep_checkpoints: int = 3
    resume: str = "none"  # none | auto (the newest complete checkpoint of this run) | PATH

    def __post_init__(self) -> None:
        for key in ("beta", "lr"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ConfigError(f"config key 'prefer.{key}': expected a finite number > 0, got {getattr(self, key)}")
        for key in ("draws", "steps", "batch_size", "eval_n", "eval_draws", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'prefer.{key}': expected >= 1, got {getattr(self, key)}")
        for key in ("eval_every", "checkpoint_every", "warmup_steps"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key 'prefer.{key}': expected >= 0, got {getattr(self, key)}")
        micro = self.micro_batch_size or self.batch_size
        if micro < 1 or self.batch_size % micro:
            raise ConfigError(f"config key 'prefer.micro_batch_size': {micro} must divide prefer.batch_size "
                              f"({self.batch_size})")

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size
