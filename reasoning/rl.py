"""RL over whole denoising trajectories — the `dlmrl train CONFIG` recipe, top to bottom:
setup → restore → loop → finish, each a short function below.

The algorithm's choices, per RL step k:
  1. eval     every `trainer.eval_every` steps / `eval_every_s` seconds (and first and last):
              held-out accuracy with the eval decoding and the task's own scorer.
  2. rollout  P = `trainer.prompts_per_step` prompts (positions (k-1)P … kP-1 of seeded
              permutations of the train split) × G = `rollout.group_size` samples from the
              rollout workers (Ray actors or in-process). Each sample is a Trajectory: the
              exact visited denoising path, its behaviour log-probs and the policy_version
              that sampled it. Synchronous: sampled now. Asynchronous (`rollout.async`):
              sampled by a producer thread while step k-1 was being trained
              (reasoning/batches.py); groups more than `max_staleness` versions behind the
              trainer are dropped and counted.
  3. reward   the configured reward functions (default: the task's verifier) on the
              decoded completions; weighted sum.
  4. advantage group-relative (mean baseline or leave-one-out, optional std
              normalisation); groups with zero reward variance are dropped.
  5. update   `trainer.inner_steps` optimizer steps over the kept samples, in micro-batches
              with gradient accumulation, through the chosen objective (reasoning/objectives/),
              token-level PPO clip against the sampling-time log-probs — for a stale sample
              against the proximal policy, importance-weighted by π_prox/π_behav (decoupled
              PPO) — optional k3 KL to the adapter-disabled model. A non-finite loss skips it.
  6. sync     LoRA-only state_dict to the workers (ray.put once) → policy_version v+1; the
              asynchronous producer ships it between two batches, so the trainer never waits.
  7. log      TRL metric names + diffusion/*, async/*, timing_s/*, timeline/*, perf/*.
  8. save     every `trainer.checkpoint_every` steps, atomically: adapter/, DeepSpeed
              optimizer state, RNG, step. `trainer.resume: auto` continues from the newest
              complete checkpoint with the same step counter and data order.
All randomness of step k derives from (seed, k) (rollouts/seeding.py), so a resumed run
repeats exactly what an uninterrupted synchronous run would have done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time

import torch
from tqdm.auto import tqdm

from reasoning.advantages import group_advantages
from reasoning.batches import AsyncRollouts, PromptSchedule, Rollouts, SyncRollouts
from reasoning import interrupts
from reasoning.checkpoint import complete_checkpoints, find_resume
from reasoning.config import Config, deepspeed_config_path, write_resolved
from reasoning.data import encode_prompt
from reasoning.distributed import (NoLogger, combine_metrics, max_over_ranks, rank_and_world,
                                   trainer_weights)
from reasoning.engine import build_engine, zero_stage
from reasoning.evaluate import evaluate
from reasoning.groups import GroupCollector
from reasoning.metrics import rollout_metrics
from reasoning.modeling import (apply_lora, count_parameters, enable_gradient_checkpointing, load_model, model_family,
                                peft_lora_config)
from reasoning.objectives import RolloutBatch, build_objective
from reasoning.preflight import check_prompt_lengths, check_rl_inputs
from reasoning.rundir import claim_run_dir
from reasoning.sft import seed_everything, sft_warm_start
from reasoning.update import update
from rewards import RewardRunner
from rollouts import Trajectory, make_policy, save_jsonl
from rollouts.seeding import ROLLOUT, UPDATE, derive_seed
from rollouts.workers import PolicySpec, RolloutGroup, SampleJob, make_jobs, sample_jobs
from reasoning.rl_run import RLRun, budget_used, checkpoint, finish, restore



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
    resume_from = find_resume(cfg.trainer.resume, cfg.run_dir)  # checked before the directory is claimed
    first_rank = int(os.environ.get("RANK", "0")) == 0  # rank 0 holds the claim for all ranks
    claim = (claim_run_dir(cfg.run_dir, resume=cfg.trainer.resume != "none", overwrite=cfg.overwrite,
                           what="RL run") if first_rank else contextlib.nullcontext())
    with claim:
        if warm:
            cfg = sft_warm_start(cfg)
            model, tokenizer = load_model(cfg.model)
        run = setup(cfg, model, tokenizer, task, splits, reward_cfg)
        try:
            restore(run, resume_from)
            start_rollouts(run)
            loop(run)
        except (KeyboardInterrupt, interrupts.Interrupted) as exc:  # SIGTERM / Ctrl-C: say where to resume
            newest = complete_checkpoints(cfg.run_dir)
            raise interrupts.Interrupted(interrupts.as_interrupted(exc).code, (
                f"interrupted at step {run.step}; the newest checkpoint is "
                f"{newest[-1] if newest else 'none yet'}; resume with trainer.resume=auto")) from None
        finally:
            close(run)
        return finish(run, started)


# --- setup: model, engine, objective, workers -------------------------------------------------------

def setup(cfg: Config, model, tokenizer, task, splits, reward_cfg) -> RLRun:
    tr = cfg.trainer
    write_resolved(cfg, cfg.run_dir)
    base_dir = cfg.model.path
    if base_dir is None:  # the tiny default: put its initial weights where the workers can read them
        base_dir = os.path.join(cfg.run_dir, "base_model")
        if not os.path.isdir(base_dir):
            model.save_pretrained(base_dir)
            tokenizer.save_pretrained(base_dir)
        model, tokenizer = load_model(dataclasses.replace(cfg.model, path=base_dir))
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    family = model_family(model)
    model = apply_lora(model, cfg.model.lora, family)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # several processes: each trains 1/world of the prompts
    micro_batches = math.ceil(tr.prompts_per_step // world_size * cfg.rollout.group_size / tr.micro_batch_size)
    runs: list[RLRun] = []  # the run, once built: the cosine schedule reads how far it has come
    engine, optimizer = build_engine(
        model, deepspeed_config_path(tr.deepspeed, "trainer.deepspeed"), lr=tr.lr, weight_decay=tr.weight_decay,
        warmup_steps=tr.warmup_steps, grad_clip=tr.grad_clip, micro_batch_size=1, grad_accum=micro_batches,
        schedule=tr.lr_schedule, optimizer_name=tr.optimizer, progress=lambda: budget_used(runs[0]) if runs else 0.0)
    rank, world = rank_and_world()
    policy = make_policy(engine.module, tokenizer, cfg.model.shift_logits)
    objective = build_objective(  # each objective takes the keys its Settings declare
        tr.objective, clip_eps_low=tr.clip_eps_low, clip_eps_high=tr.clip_eps_high, kl_coef=tr.kl_coef,
        merge_steps=tr.merge_steps, prompt_mask_prob=tr.prompt_mask_prob, importance_cap=tr.importance_cap,
        train_hints=cfg.rollout.hints.train_hints, hint_entropy_fraction=cfg.rollout.hints.entropy_fraction)
    run = RLRun(cfg, task, splits["train"], splits["test"], tokenizer, engine, optimizer, policy, objective,
                RewardRunner(reward_cfg), NoLogger(), PromptSchedule(len(splits["train"]), tr.prompts_per_step,
                                                                     cfg.seed),
                base_dir, micro_batches, rank, world)
    runs.append(run)
    if rank == 0 or not run.ray_serves_all_ranks:
        run.group = RolloutGroup(
            PolicySpec(path=base_dir, lora=peft_lora_config(cfg.model.lora, family) if run.lora else None,
                       shift_logits=cfg.model.shift_logits, family=cfg.model.family,
                       trust_remote_code=cfg.model.trust_remote_code, dtype=cfg.model.dtype),
            run.decoding, num_workers=cfg.ray.num_workers if cfg.ray.enabled else 1,
            use_ray=cfg.ray.enabled, address=cfg.ray.address, threads=cfg.ray.threads_per_worker,
            placement=cfg.ray.placement, connect_timeout_s=cfg.ray.connect_timeout_s)
        interrupts.install()  # ray.init may have put its own SIGTERM handler in place
    print(f"train {task.name} with {tr.objective}: {count_parameters(engine.module) / 1e6:.2f} M parameters "
          f"({count_parameters(engine.module, trainable_only=True) / 1e6:.3f} M trainable), "
          f"{'Ray' if cfg.ray.enabled else 'in-process'} rollouts, {run.loop_kind}, {world} trainer process(es), "
          f"run dir {cfg.run_dir}")
    return run


def trainer_sample(run: RLRun, jobs: list[SampleJob]) -> list[Trajectory]:
    """Sample `jobs` with the trainer's own (newest) weights, in eval mode as the workers are."""
    module, training = run.engine.module, run.engine.module.training
    module.eval()  # dropout off, as in the workers
    try:
        return sample_jobs(run.policy, run.decoding, jobs, run.version)
    finally:
        module.train(training)


def start_rollouts(run: RLRun) -> None:
    """Give the workers the trainer's weights, then start the batch source (sync or async) and the
    group collector (whose extra answers — hints, further prompts — are drawn by the workers in a
    synchronous run, and by the trainer itself, with its newest weights, in an asynchronous one)."""
    cfg = run.cfg
    asynchronous = cfg.rollout.async_

    def sample_now(jobs: list[SampleJob]) -> list[Trajectory]:
        if run.group is not None and not asynchronous.enabled:
            return run.group.run(jobs)
        return trainer_sample(run, jobs)

    run.collector = GroupCollector(cfg, run.task, run.train, run.tokenizer, run.rewarder, run.policy.ids.stop,
                                   sample_now, run.rank, run.world)
    weights = trainer_weights(run.engine.module, zero_stage(run.engine))  # a collective under ZeRO-3
    if run.group is None:
        return
    run.group.sync(weights, run.version)
    tolerate = asynchronous.enabled  # stamped rollouts: a worker left behind makes stale ones, not wrong ones

    def plan(step: int) -> tuple[list[int], list[SampleJob]]:
        indices = run.schedule.indices(step)
        if not run.ray_serves_all_ranks:
            indices = indices[run.rank::run.world]  # each rank samples its own prompts
        prompts = [encode_prompt(run.tokenizer, p, cfg.data.chat_template) for p in run.train[indices]["prompt"]]
        return indices, make_jobs(prompts, cfg.rollout.group_size, derive_seed(cfg.seed, step, ROLLOUT))

    def sync(weights: dict, version: int) -> None:
        run.group.sync(weights, version, tolerate_failures=tolerate)

    if not asynchronous.enabled:
        run.source = SyncRollouts(plan, run.group.run, sync, run.clock)
        return

    def trainer_run(jobs: list[SampleJob]) -> list[Trajectory]:  # the waiting trainer, its own newer weights
        return trainer_sample(run, jobs)

    chunks = max(1, min(8, cfg.trainer.prompts_per_step // 2))  # >= 2 prompts' groups per chunk
    run.source = AsyncRollouts(plan, run.group.run, sync, asynchronous.max_staleness, run.step + 1,
                               cfg.trainer.steps, run.clock, trainer_run if run.trainer_samples else None, chunks)


# --- the loop: rollout -> reward -> advantage -> update -> sync -> log -> eval -> save -----------------

def loop(run: RLRun) -> None:
    cfg, tr = run.cfg, run.cfg.trainer
    first = run.step
    if run.step == 0:
        run.eval_metrics = run_eval(run)
        run.before = run.eval_metrics.get(f"eval/{run.task.name}/acc")
    # the next timed eval is the next multiple of eval_every_s of training time (carried over a resume)
    next_eval_s = tr.eval_every_s * (math.floor(run.trained_s / tr.eval_every_s) + 1) if tr.eval_every_s else 0.0
    bar = tqdm(range(run.step + 1, tr.steps + 1), desc=f"rl {run.task.name}", disable=not cfg.logging.progress)
    for step in bar:
        step_start = time.perf_counter()
        metrics = rl_step(run, step)
        run.step = step
        if step % tr.log_every == 0 or step == tr.steps:
            run.logger.log(step, metrics)
        bar.set_postfix(reward=f"{metrics.get('reward', float('nan')):.3f}", kept=int(metrics["train/samples"]))
        # one clock for all ranks: they stop at the same step and the lr schedule reads the same budget
        run.trained_s = max_over_ranks(run.trained_s + time.perf_counter() - step_start, run.world)
        if tr.max_seconds and run.trained_s >= tr.max_seconds:
            break
        if (tr.eval_every and step % tr.eval_every == 0 and step != tr.steps) or (
                tr.eval_every_s and run.trained_s >= next_eval_s):
            run.eval_metrics = run_eval(run)
            run.logger.log(step, {"timing_s/trained": run.trained_s})
            while tr.eval_every_s and next_eval_s <= run.trained_s:
                next_eval_s += tr.eval_every_s
        if tr.checkpoint_every and step % tr.checkpoint_every == 0 and step != tr.steps:
            checkpoint(run)
    bar.close()
    if run.step > first:  # the final eval and checkpoint
        run.eval_metrics = run_eval(run)
        run.logger.log(run.step, {"timing_s/trained": run.trained_s})
        checkpoint(run)


def rl_step(run: RLRun, step: int) -> dict:
    """One RL step; returns its metrics (combined over ranks)."""
    cfg, tr, group_size = run.cfg, run.cfg.trainer, run.cfg.rollout.group_size
    started = time.perf_counter()  # the step's wall time: what the trainer waited for, not what overlapped
    timing: dict[str, float] = {}
    timeline: dict[str, float] = {}  # wall-clock intervals for `dlmrl show`'s timeline picture

    # rollout: this step's groups (sampled now, or earlier by the asynchronous producer)
    t0 = time.perf_counter()
    rollouts = next_rollouts(run, step)
    timing["rollout_wait"] = time.perf_counter() - t0
    timing["rollout"] = rollouts.sampled[1] - rollouts.sampled[0]
    timeline.update(rollout_start=rollouts.sampled[0], rollout_end=rollouts.sampled[1])
    if rollouts.synced is not None:
        timeline.update(sync_start=rollouts.synced[0], sync_end=rollouts.synced[1])
    if rollouts.trainer_sampling is not None:
        timeline.update(trainer_rollout_start=rollouts.trainer_sampling[0],
                        trainer_rollout_end=rollouts.trainer_sampling[1])
    target = len(rollouts.indices)  # the groups this rank trains on (dynamic sampling refills to it)
    rollouts, stale = drop_stale(run, rollouts)

    # reward; groups with equal rewards teach nothing: hints and further prompts (reasoning/groups.py)
    t0 = time.perf_counter()
    collected = run.collector.collect(step, rollouts.indices, rollouts.trajectories, target)
    trained = [t for g in collected.trained for t in g.trajectories]
    rewards = [r for g in collected.trained for r in g.rewards]
    advantages = group_advantages(rewards, group_size, tr.normalize_std, tr.leave_one_out)
    timing["reward"] = time.perf_counter() - t0 - collected.metrics.get("timing_s/hints", 0.0) \
        - collected.metrics.get("timing_s/dynamic", 0.0)

    # update
    timeline["update_start"] = run.clock()
    kept = [i for i in range(len(trained)) if advantages.keep[i]]
    batch = RolloutBatch([trained[i] for i in kept], advantages.values[kept], run.decoding,
                         run.policy.ids.stop, policy_version=run.version)
    result = update(run.engine, run.optimizer, run.policy, run.objective, batch, run.micro_batches,
                    tr.inner_steps, torch.Generator().manual_seed(derive_seed(cfg.seed, step, UPDATE)), run.lora,
                    timing, run.world)
    timeline["update_end"] = run.clock()

    # sync: new weights to the workers (the asynchronous producer ships them itself, between batches)
    if result.updated:
        run.version += 1
        weights = trainer_weights(run.engine.module, zero_stage(run.engine))  # a collective under ZeRO-3
        synced = run.source.publish(weights, run.version) if run.source is not None else None
        if synced is not None:  # the synchronous source ships them now, while the trainer waits
            timeline.update(sync_start=synced[0], sync_end=synced[1])
            timing["weight_sync"] = synced[1] - synced[0]
    if run.source is not None:
        run.source.step_done(step)

    # log
    epoch, cursor = run.schedule.position(step)
    restarts = run.group.restarts if run.group is not None else 0
    metrics = {**collected.reward_metrics, **collected.metrics, **result.metrics,
               **rollout_metrics(rollouts.trajectories, run.policy.ids.stop), **stale,
               "frac_reward_zero_std": 1.0 - collected.metrics["train/informative_fraction"],
               "policy_version": run.version,
               "rollout/worker_restarts": float(restarts), "data/epoch": epoch, "data/cursor": cursor,
               "lr": run.optimizer.param_groups[0]["lr"], **{f"timing_s/{k}": v for k, v in timing.items()},
               **{f"timeline/{k}": v for k, v in timeline.items()}}
    if run.group is not None:
        metrics.update({"rollout/sync_failures": float(run.group.sync_failures),
                        "rollout/regenerated_samples": float(run.group.regenerated)})
    metrics = combine_metrics(metrics, run.world)
    metrics["perf/tokens_per_s"] = metrics["completions/total_tokens"] / max(time.perf_counter() - started, 1e-9)
    if run.rank == 0 and tr.save_rollouts_every and (step % tr.save_rollouts_every == 0 or step == 1):
        os.makedirs(os.path.join(cfg.run_dir, "rollouts"), exist_ok=True)
        save_jsonl([t for g in collected.sampled for t in g.trajectories],
                   os.path.join(cfg.run_dir, "rollouts", f"step_{step:06d}.jsonl"))
    return metrics


def next_rollouts(run: RLRun, step: int) -> Rollouts:
    """This rank's rollouts of `step`. With Ray serving several trainer ranks, rank 0 alone talks to
    the workers and broadcasts the batch; every rank then takes its share, so all agree on it."""
    if not run.ray_serves_all_ranks:
        return run.source.get(step)
    import torch.distributed as dist

    box = [run.source.get(step) if run.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0].share(run.rank, run.world)


def drop_stale(run: RLRun, rollouts: Rollouts) -> tuple[Rollouts, dict[str, float]]:
    """Drop every group with a trajectory more than `rollout.async.max_staleness` policy versions
    behind the trainer (invariant 8); the rest are trained, stale ones importance-weighted."""
    group_size = run.cfg.rollout.group_size
    limit = run.cfg.rollout.async_.max_staleness if run.cfg.rollout.async_.enabled else 0
    behind = [run.version - t.policy_version for t in rollouts.trajectories]
    run.staleness.update(behind)
    keep = [g for g in range(len(rollouts.indices))
            if max(behind[g * group_size:(g + 1) * group_size]) <= limit]
    dropped = len(rollouts.indices) - len(keep)
    run.groups.update(sampled=len(rollouts.indices), dropped=dropped)
    stats = {"async/staleness_mean": sum(behind) / max(len(behind), 1), "async/staleness_max": float(max(behind)),
             "async/dropped_groups": float(dropped),
             "async/dropped_fraction": run.groups["dropped"] / max(run.groups["sampled"], 1),
             "async/trainer_sampled_fraction": rollouts.trainer_sampled / max(len(behind), 1)}
    if not dropped:
        return rollouts, stats
    kept = [t for g in keep for t in rollouts.trajectories[g * group_size:(g + 1) * group_size]]
    return dataclasses.replace(rollouts, indices=[rollouts.indices[g] for g in keep], trajectories=kept), stats


def run_eval(run: RLRun) -> dict:
    cfg, task = run.cfg, run.task
    with torch.no_grad():
        result = evaluate(run.policy, run.tokenizer, task, run.test, cfg.eval_decoding(), cfg.eval.n,
                          cfg.eval.batch_size, seed=cfg.seed, progress=cfg.logging.progress,
                          chat_template=cfg.data.chat_template)
    metrics = result.summary(f"eval/{task.name}")
    run.logger.log(run.step, metrics)
    tqdm.write(f"step {run.step}: eval {task.name} acc {result.accuracy:.3f}")
    return metrics


def close(run: RLRun) -> None:
    if run.source is not None:
        run.source.close()
    run.rewarder.close()
    if run.group is not None:
        run.group.shutdown()  # the local Ray instance itself stops with this process (Ray's atexit)
    run.logger.close()

