"""What the SFT and RL recipes share, in the order they use it.

  begin           threads and seeds, before anything random happens;
  base_weights    a run built from the tiny default (no `model.path`) writes its initial weights
                  to run_dir/base_model and trains the copy loaded back from there, so everything
                  that reads the base later (rollout workers, LoRA checkpoints, resume) sees the
                  weights the run started from, bit for bit;
  make_trainable  gradient checkpointing, then the LoRA adapter named by `model.lora`.

Evaluation is reasoning/evaluate.py's `evaluate_and_log` and checkpoints are
reasoning/checkpoint.py's `save_checkpoint` (atomic, full-disk errors named) in both recipes.
"""

from __future__ import annotations

import dataclasses
import os
import random

import numpy as np
import torch

from reasoning.config import Config
from reasoning.modeling import apply_lora, enable_gradient_checkpointing, load_model, model_family


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def begin(cfg: Config) -> None:
    """The process's torch thread count (`threads`, default 1) and every global RNG seeded."""
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)


def base_weights(cfg: Config, model: torch.nn.Module, tokenizer) -> tuple[torch.nn.Module, object, str]:
    """(model, tokenizer, base_dir): the model to train and the directory its weights came from."""
    if cfg.model.path is not None:
        return model, tokenizer, cfg.model.path
    base_dir = os.path.join(cfg.run_dir, "base_model")
    if not os.path.isdir(base_dir):  # a resumed run keeps the weights it started from
        model.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
    model, tokenizer = load_model(dataclasses.replace(cfg.model, path=base_dir), cfg.rollout.block_length)
    return model, tokenizer, base_dir


def make_trainable(cfg: Config, model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """(model, family): gradient checkpointing when asked, then LoRA (the family names what it excludes)."""
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    family = model_family(model)
    return apply_lora(model, cfg.model.lora, family), family
