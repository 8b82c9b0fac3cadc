"""DeepSpeed engine setup for one or many processes, CPU or GPU.

On CPU we run DeepSpeed's CPU accelerator with gloo. The optimizer is torch's fused
AdamW (as fast as DeepSpeed's CPUAdam, and nothing to JIT-compile); DeepSpeed owns
ZeRO partitioning, gradient accumulation, clipping and the LR schedule step.
"""

from __future__ import annotations

import json
import math
import os
import socket
from typing import Callable

import torch


def ensure_distributed_env() -> None:
    """A single process started without a launcher still needs RANK/WORLD_SIZE/MASTER_*."""
    if "RANK" in os.environ:
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def build_engine(
    model: torch.nn.Module,
    ds_config_path: str,
    lr: float,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    grad_clip: float = 1.0,
    micro_batch_size: int = 1,
    grad_accum: int = 1,
    total_steps: int = 0,
    schedule: str = "constant",
    optimizer_name: str = "adamw",
    progress: Callable[[], float] | None = None,
):
    """(engine, optimizer) for `model`'s trainable parameters under a ZeRO preset.

    `optimizer_name`: see `make_optimizer`; `progress`: see `lr_lambda`."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ensure_distributed_env()
    import deepspeed

    from reasoning.output import quiet_loggers

    quiet_loggers()  # DeepSpeed sets its logger to INFO when it is first imported
    with open(ds_config_path) as fh:
        ds_config = json.load(fh)
    ds_config.update(
        train_micro_batch_size_per_gpu=micro_batch_size,
        gradient_accumulation_steps=grad_accum,
        gradient_clipping=grad_clip,
    )
    dtype = next(model.parameters()).dtype
    ds_config.setdefault("bf16", {})["enabled"] = dtype == torch.bfloat16
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, optimizer_name, lr, weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup_steps, total_steps, schedule, progress))
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine, optimizer


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """"adamw" (torch's fused AdamW) or "sgd" (plain, no momentum). Adam's first steps move
    every parameter by ~lr whatever its gradient's size; SGD's step is proportional to the
    gradient (the gradient probes of benchmarks/pg_step.py use it)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer: expected 'adamw' or 'sgd', got {name!r}")


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str, progress: Callable[[], float] | None = None):
    """Linear warm-up, then constant or cosine decay to 10% of the peak at `total_steps` — or, when
    `progress` is given, at progress() = 1 (RL with a time budget decays over its seconds)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine" and (progress is not None or total_steps > warmup_steps):
            done = progress() if progress is not None else (step - warmup_steps) / (total_steps - warmup_steps)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, done))))
        return 1.0

    return factor


def zero_stage(engine) -> int:
    return engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0


def engine_step(engine) -> float | None:
    """`engine.step()`; at an optimizer step, returns the global gradient norm before clipping.

    DeepSpeed's ZeRO optimizers report the norm; plain ZeRO-0 fp32 clips without keeping
    it, so there we measure it ourselves."""
    norm = None
    if engine.is_gradient_accumulation_boundary() and zero_stage(engine) == 0:
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else 0.0
    engine.step()
    if norm is None and engine.was_step_applied():
        norm = engine.get_global_grad_norm()
    return None if norm is None else float(norm)
