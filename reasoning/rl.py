"""RL over whole denoising trajectories — the `dlmrl train CONFIG` recipe, top to bottom.

The algorithm's choices, per RL step:
  1. eval     every `trainer.eval_every` steps (and first and last): held-out accuracy
              with the eval decoding and the task's own scorer.
  2. rollout  P = `trainer.prompts_per_step` prompts (a seeded permutation of the train
              split, epoch after epoch) × G = `rollout.group_size` samples, from the
              rollout workers (Ray actors or in-process) at policy_version v. Each sample
              is a Trajectory: the exact visited denoising path and its behaviour log-probs.
  3. reward   the configured reward functions (default: the task's verifier) on the
              decoded completions; weighted sum.
  4. advantage group-relative (mean baseline or leave-one-out, optional std
              normalisation); groups with zero reward variance are dropped.
  5. update   `trainer.inner_steps` optimizer steps over the kept samples, each in
              micro-batches with gradient accumulation, through the chosen objective
              (reasoning/objectives.py: trajectory | mean_field | coupled), token-level
              PPO clip against the sampling-time log-probs, optional k3 KL to the
              adapter-disabled model. A non-finite loss skips the step.
  6. sync     LoRA-only state_dict to the workers (ray.put once) → policy_version v+1.
  7. log      TRL metric names + diffusion/*, timing_s/*, perf/* (jsonl, TensorBoard, wandb).
  8. save     every `trainer.checkpoint_every` steps, atomically: adapter/, DeepSpeed
              optimizer state, RNG, data position. `trainer.resume: auto` continues from
              the newest complete checkpoint with the same step counter and data order.
All randomness of step k derives from (seed, k), so a resumed run repeats exactly what an
uninterrupted run would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from reasoning.advantages import group_advantages
from reasoning.checkpoint import (checkpoint_name, complete_checkpoints, is_checkpoint, prune_checkpoints,
                                  save_checkpoint)
from reasoning.config import Config, deepspeed_config_path, write_resolved
from reasoning.data import decode_completion, encode_prompt
from reasoning.distributed import (NoLogger, any_rank, barrier, combine_metrics, rank_and_world, sum_over_ranks,
                                   trainer_weights)
from reasoning.engine import build_engine, engine_step, zero_stage
from reasoning.evaluate import answer_length, evaluate
from reasoning.metrics import MetricsLogger
from reasoning.modeling import (apply_lora, count_parameters, enable_gradient_checkpointing, load_model, model_family,
                                peft_lora_config)
from reasoning.objectives import ObjectiveSettings, RolloutBatch, build_objective
from reasoning.preflight import check_prompt_lengths, check_rl_inputs
from reasoning.rundir import claim_run_dir
from reasoning.schema import ConfigError
from reasoning.sft import seed_everything
from rewards import RewardRunner
from rollouts import make_policy, save_jsonl
from rollouts.workers import PolicySpec, RolloutGroup


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed for one purpose (stream) at one RL step: resume-safe randomness."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0])


def find_resume(cfg: Config) -> str | None:
    if cfg.trainer.resume == "none":
        return None
    if cfg.trainer.resume == "auto":
        found = complete_checkpoints(cfg.run_dir)
        return found[-1] if found else None
    if not is_checkpoint(cfg.trainer.resume):
        raise ConfigError(f"config key 'trainer.resume': '{cfg.trainer.resume}' is not a complete checkpoint "
                          f"(no trainer_state.json)")
    return cfg.trainer.resume


def truncate_metrics(run_dir: str, step: int) -> None:
    """Drop metrics logged after `step` (by a run that died before its next checkpoint)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as fh:
        kept = [line for line in fh if line.strip() and json.loads(line).get("step", 0) <= step]
    with open(path, "w") as fh:
        fh.writelines(kept)


class PromptStream:
    """Prompts in a seeded random order, epoch after epoch; its position is checkpointed."""

    def __init__(self, size: int, seed: int, epoch: int = 0, cursor: int = 0):
        self.size, self.seed, self.epoch, self.cursor = size, seed, epoch, cursor
        self.order = self._order()

    def _order(self) -> list[int]:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch)).tolist()

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.cursor == self.size:
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self._order()
            out.append(self.order[self.cursor])
            self.cursor += 1
        return out


def warm_start(cfg: Config) -> Config:
    """`trainer.sft_warm_start`: masked-diffusion SFT with the `sft` block first (reused when a
    previous attempt finished it), then RL from that checkpoint."""
    from reasoning.sft import run_sft

    sft_cfg = dataclasses.replace(cfg, output_dir=cfg.run_dir, name="sft", overwrite=True)  # this run's own subdir
    done = complete_checkpoints(sft_cfg.run_dir)
    if not done or not os.path.isfile(os.path.join(sft_cfg.run_dir, "sft_result.json")):
        print(f"SFT warm start: {cfg.sft.steps} steps into {sft_cfg.run_dir}")
        run_sft(sft_cfg)
        done = complete_checkpoints(sft_cfg.run_dir)
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=done[-1]))


def run_rl(cfg: Config) -> dict:
    """Train with RL; returns the final metrics (incl. `eval/<task>/acc`, and `before`/`after`).

    Config, model, data and rewards are all checked before anything is written; then the run
    claims its directory (reasoning/rundir.py) for its whole lifetime."""
    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    task, splits, reward_cfg = check_rl_inputs(cfg)
    warm = cfg.trainer.sft_warm_start and cfg.model.path is None
    model, tokenizer = load_model(cfg.model)
    if not warm:
        check_prompt_lengths(cfg, tokenizer, model, splits)
    first_rank = int(os.environ.get("RANK", "0")) == 0  # rank 0 holds the claim for all ranks
    claim = (claim_run_dir(cfg.run_dir, resume=cfg.trainer.resume != "none", overwrite=cfg.overwrite,
                           what="RL run") if first_rank else contextlib.nullcontext())
    with claim:
        if warm:
            cfg = warm_start(cfg)
            model, tokenizer = load_model(cfg.model)
        return _train(cfg, model, tokenizer, task, splits, reward_cfg, started)


def _train(cfg: Config, model, tokenizer, task, splits, reward_cfg, started: float) -> dict:
    tr = cfg.trainer
    run_dir = cfg.run_dir
    resume_from = find_resume(cfg)
    write_resolved(cfg, run_dir)

    # --- model: frozen base on disk (workers load it too) + LoRA adapter -------------------
    base_dir = cfg.model.path
    if base_dir is None:  # the tiny default: put its initial weights where the workers can read them
        base_dir = os.path.join(run_dir, "base_model")
        if not os.path.isdir(base_dir):
            model.save_pretrained(base_dir)
            tokenizer.save_pretrained(base_dir)
        model, tokenizer = load_model(dataclasses.replace(cfg.model, path=base_dir))
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    lora = cfg.model.lora.enabled
    family = model_family(model)
    model = apply_lora(model, cfg.model.lora, family)
    train, test = splits["train"], splits["test"]
    decoding = cfg.rollout_decoding()
    group_size = cfg.rollout.group_size
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # several processes: each takes 1/world of the prompts
    samples_per_rank = tr.prompts_per_step // world_size * group_size
    micro_batches = math.ceil(samples_per_rank / tr.micro_batch_size)

    engine, optimizer = build_engine(
        model, deepspeed_config_path(tr.deepspeed, "trainer.deepspeed"), lr=tr.lr, weight_decay=tr.weight_decay,
        warmup_steps=tr.warmup_steps, grad_clip=tr.grad_clip, micro_batch_size=1, grad_accum=micro_batches,
        total_steps=tr.steps * tr.inner_steps, schedule="constant", optimizer_name=tr.optimizer)
    raw_model = engine.module
    rank, world = rank_and_world()
    if world > 1 and cfg.ray.enabled:
        raise ConfigError("config key 'ray.enabled': with several trainer processes each rank samples with its own "
                          "in-process rollout worker; set ray.enabled=false (Ray workers serve one trainer process)")
    policy = make_policy(raw_model, tokenizer, cfg.model.shift_logits)
    objective = build_objective(tr.objective, ObjectiveSettings(
        clip_eps_low=tr.clip_eps_low, clip_eps_high=tr.clip_eps_high, kl_coef=tr.kl_coef,
        merge_steps=tr.merge_steps, prompt_mask_prob=tr.prompt_mask_prob))

    # --- resume -----------------------------------------------------------------------------
    start_step, version, stream, trained_s = 0, 0, PromptStream(len(train), cfg.seed), 0.0
    if resume_from is not None:
        with open(os.path.join(resume_from, "trainer_state.json")) as fh:
            state = json.load(fh)
        engine.load_checkpoint(os.path.join(resume_from, "ds"), tag="state", load_module_strict=False,
                               load_optimizer_states=True, load_lr_scheduler_states=True)
        rng = torch.load(os.path.join(resume_from, "ds", f"rng_rank{rank}.pt"), weights_only=False)
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        start_step, version = state["step"], state["policy_version"]
        trained_s = state.get("trained_s", 0.0)  # max_seconds is a budget for the whole run
        stream = PromptStream(len(train), cfg.seed, state["data_epoch"], state["data_cursor"])
        if rank == 0:
            truncate_metrics(run_dir, start_step)
        print(f"resumed from {resume_from} at step {start_step}")

    logger = (MetricsLogger(run_dir, cfg.logging.tensorboard, cfg.logging.wandb, cfg.name,
                            append=resume_from is not None) if rank == 0 else NoLogger())
    group = RolloutGroup(
        PolicySpec(path=base_dir, lora=peft_lora_config(cfg.model.lora, family) if lora else None,
                   shift_logits=cfg.model.shift_logits, family=cfg.model.family,
                   trust_remote_code=cfg.model.trust_remote_code, dtype=cfg.model.dtype),
        decoding, num_workers=cfg.ray.num_workers if cfg.ray.enabled else 1, use_ray=cfg.ray.enabled,
        address=cfg.ray.address, threads=cfg.ray.threads_per_worker)
    group.sync(trainer_weights(raw_model, zero_stage(engine)), version)
    rewarder = RewardRunner(reward_cfg)
    print(f"train {task.name} with {tr.objective}: {count_parameters(raw_model) / 1e6:.2f} M parameters "
          f"({count_parameters(raw_model, trainable_only=True) / 1e6:.3f} M trainable), "
          f"{'Ray' if cfg.ray.enabled else 'in-process'} rollouts, run dir {run_dir}")

    def run_eval(step: int) -> dict:
        with torch.no_grad():
            result = evaluate(policy, tokenizer, task, test, cfg.eval_decoding(), cfg.eval.n, cfg.eval.batch_size,
                              seed=cfg.seed, progress=cfg.logging.progress, chat_template=cfg.data.chat_template)
        metrics = result.summary(f"eval/{task.name}")
        logger.log(step, metrics)
        tqdm.write(f"step {step}: eval {task.name} acc {result.accuracy:.3f}")
        return metrics

    def checkpoint(step: int, metrics: dict) -> str:
        """Every rank writes its optimizer shard and RNG to a staging dir; rank 0 then builds the
        checkpoint around it in a temp dir and renames it into place (trainer_state.json last)."""
        staging = os.path.join(run_dir, "checkpoints", f".ds-{checkpoint_name(step)}")
        engine.save_checkpoint(staging, tag="state", save_latest=False, exclude_frozen_parameters=lora)
        torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                   os.path.join(staging, f"rng_rank{rank}.pt"))
        barrier()
        path = os.path.join(run_dir, "checkpoints", checkpoint_name(step))
        if rank == 0:
            path = save_checkpoint(run_dir, step, raw_model, tokenizer, {
                "base_model": base_dir, "policy_version": version, "data_epoch": stream.epoch,
                "data_cursor": stream.cursor, "metrics": metrics, "task": task.name, "objective": tr.objective,
                "world_size": world, "trained_s": trained_s,
            }, zero3=zero_stage(engine) == 3, extra=lambda tmp: shutil.move(staging, os.path.join(tmp, "ds")))
            prune_checkpoints(run_dir, tr.keep_checkpoints)
        barrier()
        return path

    # --- the RL loop ---------------------------------------------------------------------------
    eval_metrics = run_eval(start_step) if start_step == 0 else {}
    before = eval_metrics.get(f"eval/{task.name}/acc")
    metrics: dict = {}
    # training wall time (evals excluded), carried over a resume; the next timed eval is the next multiple
    next_eval_s = tr.eval_every_s * (math.floor(trained_s / tr.eval_every_s) + 1) if tr.eval_every_s else 0.0
    final_step = tr.steps
    bar = tqdm(range(start_step + 1, tr.steps + 1), desc=f"rl {task.name}", disable=not cfg.logging.progress)
    try:
        for step in bar:
            step_start = time.perf_counter()
            timing = {}
            # rollout
            t0 = time.perf_counter()
            rows = train.select(stream.take(tr.prompts_per_step)[rank::world])
            prompts = [encode_prompt(tokenizer, p, cfg.data.chat_template) for p in rows["prompt"]]
            trajectories = group.sample(prompts, group_size, seed=step_seed(cfg.seed, step, 0))
            timing["rollout"] = time.perf_counter() - t0

            # reward
            t0 = time.perf_counter()
            completions = [decode_completion(tokenizer, t.final_tokens, policy.ids.stop) for t in trajectories]
            columns = {c: [v for v in rows[c] for _ in range(group_size)] for c in rows.column_names if c != "prompt"}
            scored = rewarder([p for p in rows["prompt"] for _ in range(group_size)], completions,
                              [t.final_tokens.tolist() for t in trajectories], **columns)
            advantages = group_advantages(scored.total, group_size, tr.normalize_std, tr.leave_one_out)
            timing["reward"] = time.perf_counter() - t0

            # update
            kept = [i for i in range(len(trajectories)) if advantages.keep[i]]
            batch = RolloutBatch([trajectories[i] for i in kept], advantages.values[kept], decoding, policy.ids.stop)
            update = _update(engine, optimizer, policy, objective, batch, micro_batches, tr.inner_steps,
                             torch.Generator().manual_seed(step_seed(cfg.seed, step, 1)), lora, timing,
                             world)
            if update["updated"]:
                t0 = time.perf_counter()
                version += 1
                group.sync(trainer_weights(raw_model, zero_stage(engine)), version)
                timing["weight_sync"] = time.perf_counter() - t0

            # log
            metrics = {**scored.metrics, **update["metrics"], **_rollout_metrics(trajectories, policy.ids.stop),
                       "frac_reward_zero_std": advantages.frac_zero_std, "policy_version": version,
                       "rollout/worker_restarts": float(group.restarts),
                       "data/epoch": stream.epoch, "data/cursor": stream.cursor,
                       "lr": optimizer.param_groups[0]["lr"],
                       **{f"timing_s/{k}": v for k, v in timing.items()}}
            metrics = combine_metrics(metrics, world)
            metrics["perf/tokens_per_s"] = metrics["completions/total_tokens"] / max(sum(timing.values()), 1e-9)
            if step % tr.log_every == 0 or step == tr.steps:
                logger.log(step, metrics)
            if rank == 0 and tr.save_rollouts_every and (step % tr.save_rollouts_every == 0 or step == 1):
                os.makedirs(os.path.join(run_dir, "rollouts"), exist_ok=True)
                save_jsonl(trajectories, os.path.join(run_dir, "rollouts", f"step_{step:06d}.jsonl"))
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", kept=len(kept))
            trained_s += time.perf_counter() - step_start
            if tr.max_seconds and trained_s >= tr.max_seconds:
                final_step = step
                break
            timed_eval = tr.eval_every_s and trained_s >= next_eval_s
            if (tr.eval_every and step % tr.eval_every == 0 and step != tr.steps) or timed_eval:
                eval_metrics = run_eval(step)
                logger.log(step, {"timing_s/trained": trained_s})
                while tr.eval_every_s and next_eval_s <= trained_s:
                    next_eval_s += tr.eval_every_s
            if tr.checkpoint_every and step % tr.checkpoint_every == 0 and step != tr.steps:
                checkpoint(step, eval_metrics)
        bar.close()
        if start_step < final_step:
            eval_metrics = run_eval(final_step)
            logger.log(final_step, {"timing_s/trained": trained_s})
            checkpoint(final_step, eval_metrics)
    finally:
        rewarder.close()
        group.shutdown()
        logger.close()
    after = eval_metrics.get(f"eval/{task.name}/acc")
    summary = {"task": task.name, "steps": final_step, "policy_version": version, "trained_s": trained_s,
               **eval_metrics}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if before is not None and after is not None:
        summary.update(before=before, after=after, gain_pts=round(100 * (after - before), 1))
        table = (f"| {task.name} held-out accuracy ({min(cfg.eval.n, len(test))} problems) | value |\n|---|---|\n"
                 f"| before RL (start checkpoint) | {100 * before:.1f} % |\n"
                 f"| after RL ({final_step} steps, {tr.objective}) | {100 * after:.1f} % |\n"
                 f"| gain | {100 * (after - before):+.1f} pts |\n| wall time | {summary['seconds']:.0f} s |\n")
        print("\n" + table)
        if rank == 0:
            with open(os.path.join(run_dir, "summary.md"), "w") as fh:
                fh.write(table)
    if rank == 0:
        _draw(run_dir, tokenizer)
    return summary


def _draw(run_dir: str, tokenizer) -> None:
    """curves.png and pictures of the first and last saved rollouts (best effort: never fails a run)."""
    import glob

    from reasoning.show import plot_run, show_trajectories

    try:
        plot_run(run_dir)
        saved = sorted(glob.glob(os.path.join(run_dir, "rollouts", "*.jsonl")))
        for path in saved[:1] + saved[-1:] if len(saved) > 1 else saved:
            show_trajectories(path, tokenizer)
    except Exception as exc:  # noqa: BLE001 — a picture is not worth losing a finished run
        print(f"could not draw pictures: {exc}")


def _zero_loss(model: torch.nn.Module) -> torch.Tensor:
    """A loss of exactly 0 that still touches every trainable parameter (keeps DeepSpeed's
    gradient accumulation in step when a micro-batch is empty or its loss is skipped)."""
    return sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), torch.zeros(()))


def _update(engine, optimizer, policy, objective, batch: RolloutBatch, micro_batches: int, inner_steps: int,
            generator: torch.Generator, lora: bool, timing: dict, world: int = 1) -> dict:
    """`inner_steps` optimizer steps over `batch`; each = `micro_batches` accumulated backward passes.

    With several processes every rank makes the same number of backward/step calls (empty
    micro-batches contribute a zero loss) and a skip is agreed by all ranks."""
    totals: dict[str, float] = {}
    if not any_rank(bool(batch.trajectories), world):  # every group had equal rewards: nothing to learn
        return {"updated": False, "metrics": {"skipped_steps": 0.0}}
    model = engine.module
    t0 = time.perf_counter()
    reference = model.disable_adapter() if lora and objective.s.kl_coef > 0 else None
    # dropout off: replay must see the sampler's function. transformers only checkpoints activations
    # in train mode, so with gradient checkpointing we stay in train mode (DLM configs have dropout 0).
    if getattr(model, "is_gradient_checkpointing", False):
        engine.train()
    else:
        engine.eval()
    if batch.trajectories:
        objective.prepare(policy, batch, generator, reference, inner_steps)
    timing["logp"] = time.perf_counter() - t0
    # one normalisation for every objective: the units of the whole update, over all ranks; DeepSpeed
    # averages gradients over ranks, so each rank's loss is scaled by the world size to make it a sum
    units = max(sum_over_ranks(objective.units(batch) if batch.trajectories else 0, world), 1)
    chunks = [c.tolist() for c in np.array_split(np.arange(len(batch.trajectories)), micro_batches)]
    t0 = time.perf_counter()
    skipped, grad_norm, first_dev = 0, float("nan"), 0.0
    for inner in range(inner_steps):
        bad = False
        for k, chunk in enumerate(chunks):
            if chunk:
                loss, stats = objective.loss(policy, batch, chunk, units / world, inner)
                if not torch.isfinite(loss):
                    bad, loss = True, _zero_loss(model)
                for key, value in stats.items():
                    totals[key] = totals.get(key, 0.0) + value
                if inner == 0:
                    first_dev = max(first_dev, stats["ratio_max_abs_dev"])
                totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
            else:
                loss = _zero_loss(model)
            engine.backward(loss, scale_wrt_gas=False)  # already normalised by the batch's units
            if k == len(chunks) - 1:
                bad = any_rank(bad or not _grads_finite(model), world)
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
        "entropy": totals.get("entropy_sum", 0.0) / n_units, "ratio_mean": totals.get("ratio_sum", 0.0) / n_units,
        "ratio/first_inner_max_dev": first_dev,
        "clip_ratio/low_mean": totals.get("clip_low", 0.0) / n_units,
        "clip_ratio/high_mean": totals.get("clip_high", 0.0) / n_units,
        "clip_ratio/region_mean": (totals.get("clip_low", 0.0) + totals.get("clip_high", 0.0)) / n_units,
        "train/samples": float(len(batch.trajectories)), "train/units": float(units),
    }
    if "kl_sum" in totals:
        metrics["kl"] = totals["kl_sum"] / n_units
    return {"updated": skipped < inner_steps, "metrics": metrics}


def _grads_finite(model: torch.nn.Module) -> bool:
    """Only checkable where gradients live on the parameters (ZeRO-0); ZeRO-2/3 partition them."""
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _rollout_metrics(trajectories, stop: tuple[int, ...]) -> dict[str, float]:
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
