"""`dlmrl prefer CONFIG`: preference training of a masked diffusion LM — VRPO (LLaDA 1.5) by default,
plain DPO on ELBO estimates with `prefer.estimator: dpo` (the estimators: reasoning/preference.py).

Algorithm, per step of `prefer.batch_size` (prompt, chosen, rejected) pairs:
  1. n = `prefer.draws` masked copies of each chosen and rejected answer (VRPO: stratified counts,
     the same masks for the policy and the reference);
  2. ELBO estimates under the policy (with grad) and under the reference (the model with its LoRA
     adapter disabled, or a frozen copy of the starting weights for a full fine-tune);
  3. DPO's loss −log σ(β[(B̂_θ − B̂_ref)(y_w) − (B̂_θ − B̂_ref)(y_l)]), averaged over the pairs;
  4. one DeepSpeed step (ZeRO preset, gradient accumulation over micro-batches, clipping).
Logged as TRL names them (rewards/chosen, rewards/margins, rewards/accuracies), plus the policy's
ELBOs and the variance of the pair-score estimate (elbo/score_var). Every `eval_every` steps: the
same on held-out pairs, with a fixed seed. Checkpoints hold the weights (or the adapter), the
optimizer and the RNG, so `prefer.resume: auto` continues a run; `dlmrl export` merges them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import shutil
import time

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from reasoning.checkpoint import (check_resume_fits, checkpoint_name, find_resume, prune_checkpoints, read_state,
                                  save_checkpoint, truncate_metrics, writing)
from reasoning.config import Config, deepspeed_config_path, write_resolved
from reasoning.engine import build_engine, engine_step, zero_stage
from reasoning.metrics import MetricsLogger
from reasoning.modeling import check_lora_targets, count_parameters, load_model
from reasoning.output import PhaseProgress
from reasoning.preference import PreferenceBatch, PreferenceStats, preference_loss
from reasoning.preference_data import pairs_from_task, read_pairs, tokenize_pairs
from reasoning.preflight import check_prompt_lengths
from reasoning.recipe import base_weights, begin, make_trainable
from reasoning.rundir import claim_run_dir
from reasoning.schema import ConfigError
from reasoning.tasks import get_task
from rollouts import DiffusionPolicy, make_policy


def load_pairs(cfg: Config) -> tuple[list[dict], list[dict], str]:
    """(train pairs, held-out pairs, where they come from)."""
    pf = cfg.prefer
    if pf.train_file is None:
        task = get_task(cfg.data.task)
        splits = task.build(cfg.data)
        return pairs_from_task(task, splits["train"]), pairs_from_task(task, splits["test"]), f"task {task.name}"
    pairs = read_pairs(pf.train_file, "prefer.train_file")
    if pf.test_file is not None:
        return pairs, read_pairs(pf.test_file, "prefer.test_file"), pf.train_file
    n_test = min(cfg.data.test_size, len(pairs) - 1)
    if n_test < 1:
        raise ConfigError(f"config key 'prefer.test_file': '{pf.train_file}' has one pair; give held-out pairs "
                          f"in prefer.test_file (or more rows: the first data.test_size are held out)")
    return pairs[n_test:], pairs[:n_test], pf.train_file


def run_prefer(cfg: Config) -> dict:
    """Train on preference pairs; returns the final metrics (incl. eval/rewards/accuracies).
    Config, model and data are checked before anything is written."""
    begin(cfg)
    pf = cfg.prefer
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("dlmrl prefer runs as one process (WORLD_SIZE 1); launch it without torchrun / deepspeed")
    model, tokenizer = load_model(cfg.model, cfg.rollout.block_length)
    check_lora_targets(model, cfg.model.lora)
    if hasattr(model, "attention_block_length"):
        raise ConfigError("config key 'model': dlmrl prefer estimates ELBOs over the whole answer canvas; a "
                          "block-diffusion model (sdar, llada2) needs a per-block ELBO, which it does not have yet")
    train_pairs, test_pairs, source = load_pairs(cfg)
    splits = {"train": Dataset.from_list([{"prompt": p["prompt"]} for p in train_pairs]),
              "test": Dataset.from_list([{"prompt": p["prompt"]} for p in test_pairs])}
    check_prompt_lengths(cfg, tokenizer, model, splits)
    gen = cfg.rollout.gen_length
    train = tokenize_pairs(train_pairs, tokenizer, gen, cfg.data.chat_template, f"train ({source})")
    test = tokenize_pairs(test_pairs[:pf.eval_n], tokenizer, gen, cfg.data.chat_template, f"held-out ({source})")
    resume_from = find_resume(pf.resume, cfg.run_dir, "prefer.resume", kind="prefer")
    if resume_from is not None:
        check_resume_fits(resume_from, model, cfg.model.lora.enabled, cfg.model.lora.r, 1, key="prefer.resume")
    with claim_run_dir(cfg.run_dir, resume=pf.resume != "none", overwrite=cfg.overwrite, what="preference run"):
        return _prefer(cfg, model, tokenizer, train, test, source, resume_from)


def reference_of(policy: DiffusionPolicy, lora: bool, frozen: torch.nn.Module | None):
    """A context in which `policy` computes the reference: the adapter off, or the frozen copy in place."""
    if lora:
        return policy.model.disable_adapter()

    @contextlib.contextmanager
    def swapped():
        trained, policy.model = policy.model, frozen
        try:
            yield
        finally:
            policy.model = trained

    return swapped()


def batch_of(rows: dict) -> PreferenceBatch:
    return PreferenceBatch(list(rows["prompt_ids"]), torch.tensor(rows["chosen_ids"]), torch.tensor(rows["rejected_ids"]))


def _prefer(cfg: Config, model, tokenizer, train: Dataset, test: Dataset, source: str, resume_from: str | None) -> dict:
    pf = cfg.prefer
    run_dir = cfg.run_dir
    write_resolved(cfg, run_dir)
    model, tokenizer, base_dir = base_weights(cfg, model, tokenizer)
    frozen = None if cfg.model.lora.enabled else copy.deepcopy(model).eval().requires_grad_(False)
    model, _ = make_trainable(cfg, model)
    engine, optimizer = build_engine(
        model, deepspeed_config_path(pf.deepspeed, "prefer.deepspeed"), lr=pf.lr, weight_decay=pf.weight_decay,
        warmup_steps=pf.warmup_steps, grad_clip=pf.grad_clip, micro_batch_size=pf.micro,
        grad_accum=pf.batch_size // pf.micro, total_steps=pf.steps, schedule=pf.lr_schedule)
    policy = make_policy(engine, tokenizer, cfg.model.shift_logits)
    if frozen is not None:
        frozen.to(policy.device)
    stop = policy.ids.stop
    step, generator = 0, torch.Generator().manual_seed(cfg.seed)
    if resume_from is not None:
        step = _restore(engine, resume_from, generator)
        truncate_metrics(run_dir, step)
    logger = MetricsLogger(run_dir, cfg.logging.tensorboard, cfg.logging.wandb, cfg.name, append=resume_from is not None)
    print(f"prefer ({pf.estimator}, β {pf.beta}, {pf.draws} draws): {count_parameters(engine.module) / 1e6:.2f} M "
          f"parameters ({count_parameters(engine.module, trainable_only=True) / 1e6:.2f} M trainable), "
          f"{len(train)} pairs from {source}, {len(test)} held out, run dir {run_dir}")

    def evaluate(at: int) -> dict:
        """Held-out pairs, VRPO's shared stratified masks, the same seed at every evaluation."""
        fixed = torch.Generator().manual_seed(cfg.seed + 1)
        parts = []
        engine.eval()
        with torch.no_grad():
            for lo in range(0, len(test), pf.micro):
                _, stats = preference_loss(policy, reference_of(policy, cfg.model.lora.enabled, frozen),
                                           batch_of(test[lo:lo + pf.micro]), stop, pf.beta, pf.eval_draws, "vrpo", fixed)
                parts.append(stats)
        engine.train()
        joined = PreferenceStats(*(torch.cat([getattr(s, f) for s in parts]) for f in PreferenceStats.__dataclass_fields__))
        metrics = joined.metrics("eval/")
        logger.log(at, metrics)
        tqdm.write(f"step {at}: held-out preference accuracy {metrics['eval/rewards/accuracies']:.3f}, policy prefers "
                   f"chosen {metrics['eval/elbo/prefers_chosen']:.3f}, margin {metrics['eval/rewards/margins']:.4f}")
        return metrics

    def checkpoint(at: int, metrics: dict) -> str:
        return _checkpoint(cfg, engine, tokenizer, at, base_dir, generator, metrics)

    start = time.perf_counter()
    eval_metrics = evaluate(step) if step == 0 else {}
    before = eval_metrics.get("eval/elbo/prefers_chosen")
    bar = PhaseProgress(f"prefer {pf.estimator}", pf.steps, initial=step, enabled=cfg.logging.progress)
    engine.train()
    for step in range(step + 1, pf.steps + 1):
        # the step's pairs depend only on (seed, step): a resumed run trains on what the original would have
        picked = np.random.default_rng([cfg.seed, step]).choice(len(train), size=min(pf.batch_size, len(train)),
                                                                replace=False)
        step_loss, parts = 0.0, []
        for lo in range(0, len(picked), pf.micro):
            batch = batch_of(train[picked[lo:lo + pf.micro].tolist()])
            loss, stats = preference_loss(policy, reference_of(policy, cfg.model.lora.enabled, frozen), batch, stop,
                                          pf.beta, pf.draws, pf.estimator, generator)
            engine.backward(loss)
            grad_norm = engine_step(engine)
            step_loss += float(loss.detach()) * len(batch.prompt_ids) / len(picked)
            parts.append(stats)
        bar.update(step, loss=step_loss)
        if step % pf.log_every == 0 or step == pf.steps:
            joined = PreferenceStats(*(torch.cat([getattr(s, f) for s in parts])
                                       for f in PreferenceStats.__dataclass_fields__))
            logger.log(step, {"loss": step_loss, "lr": optimizer.param_groups[0]["lr"],
                              "grad_norm": grad_norm if grad_norm is not None else float("nan"),
                              "timing_s/elapsed": time.perf_counter() - start, **joined.metrics()})
        if pf.eval_every and step % pf.eval_every == 0 and step != pf.steps:
            eval_metrics = evaluate(step)
        if pf.checkpoint_every and step % pf.checkpoint_every == 0 and step != pf.steps:
            checkpoint(step, eval_metrics)
    bar.close()
    eval_metrics = evaluate(pf.steps)
    path = checkpoint(pf.steps, eval_metrics)
    logger.close()
    final = {"estimator": pf.estimator, "steps": pf.steps, "loss": step_loss if pf.steps > 0 else None,
             "checkpoint": path, "seconds": round(time.perf_counter() - start, 1), **eval_metrics}
    if before is not None:
        final["before/elbo/prefers_chosen"] = before
    with open(os.path.join(run_dir, "prefer_result.json"), "w") as fh:
        json.dump(final, fh, indent=2)
    return final


def _checkpoint(cfg: Config, engine, tokenizer, step: int, base_dir: str, generator: torch.Generator,
                metrics: dict) -> str:
    """Weights (or adapter), optimizer and RNG, written atomically (the RL checkpoint's layout)."""
    root = os.path.join(cfg.run_dir, "checkpoints")
    staging = os.path.join(root, f".ds-{checkpoint_name(step)}")
    try:
        with writing(root):
            engine.save_checkpoint(staging, tag="state", save_latest=False, exclude_frozen_parameters=cfg.model.lora.enabled)
            torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                        "generator": generator.get_state()}, os.path.join(staging, "rng_rank0.pt"))
            path = save_checkpoint(cfg.run_dir, step, engine.module, tokenizer,
                                   {"kind": "prefer", "base_model": base_dir, "metrics": metrics, "world_size": 1,
                                    "estimator": cfg.prefer.estimator},
                                   zero3=zero_stage(engine) == 3,
                                   extra=lambda tmp: shutil.move(staging, os.path.join(tmp, "ds")))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    prune_checkpoints(cfg.run_dir, cfg.prefer.keep_checkpoints)
    return path


def _restore(engine, checkpoint: str, generator: torch.Generator) -> int:
    state = read_state(checkpoint)
    engine.load_checkpoint(os.path.join(checkpoint, "ds"), tag="state", load_module_strict=False,
                           load_optimizer_states=True, load_lr_scheduler_states=True)
    rng = torch.load(os.path.join(checkpoint, "ds", "rng_rank0.pt"), weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    generator.set_state(rng["generator"])
    print(f"resumed from {checkpoint} at step {state['step']}")
    return int(state["step"])
