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
              (reasoning/rollout_sources.py); groups more than `max_staleness` versions behind the
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
import math
import os
import time

import torch

from reasoning import interrupts
from reasoning.credit import assign_credit, branch_metrics
from reasoning.rollout_sources import AsyncRollouts, PromptSchedule, Rollouts, SyncRollouts, start_workers
from reasoning.checkpoint import check_resume_fits, complete_checkpoints, find_resume
from reasoning.config import Config, deepspeed_config_path, write_resolved
from reasoning.data import encode_prompt
from reasoning.distributed import combine_metrics, max_over_ranks, rank_and_world, trainer_weights
from reasoning.engine import build_engine, zero_stage
from reasoning.evaluate import evaluate_and_log
from reasoning.groups import FirstRound, Group, GroupCollector, StepGroups, split_groups
from reasoning.metrics import rollout_metrics
from reasoning.modeling import check_lora_targets, count_parameters, load_model, peft_lora_config
from reasoning.output import PhaseProgress
from reasoning.objectives import StepBatch, build_objective
from reasoning.preflight import check_decoding, check_prompt_lengths, check_rl_inputs
from reasoning.rundir import claim_run_dir
from reasoning.step_timer import StepTimer, spans
from reasoning.recipe import base_weights, begin, make_trainable
from reasoning.sft import sft_warm_start
from reasoning.update import Learner, UpdateResult, update
from rewards import RewardRunner
from rollouts import Trajectory, make_policy, save_jsonl
from rollouts.seeding import ROLLOUT, UPDATE, derive_seed
from rollouts.branching import sample_tree
from rollouts.workers import PolicySpec, SampleJob, make_jobs, sample_jobs
from reasoning.rl_run import Budget, Progress, RLRun, checkpoint, drop_stale, finish, restore

def run_rl(cfg: Config) -> dict:
    """Train with RL; returns the final metrics (incl. `eval/<task>/acc`, and `before`/`after`).

    Config, model, data and rewards are all checked before anything is written; then the run
    claims its directory (reasoning/rundir.py) for its whole lifetime."""
    started = time.perf_counter()
    begin(cfg)
    task, splits, reward_cfg = check_rl_inputs(cfg)
    warm = cfg.trainer.sft_warm_start and cfg.model.path is None
    model, tokenizer = load_model(cfg.model, cfg.rollout.block_length)
    check_lora_targets(model, cfg.model.lora)
    check_decoding(cfg, tokenizer, model)
    if not warm:
        check_prompt_lengths(cfg, tokenizer, model, splits)
    resume_from = find_resume(cfg.trainer.resume, cfg.run_dir)  # checked before the directory is claimed
    if resume_from is not None:
        check_resume_fits(resume_from, model, cfg.model.lora.enabled, cfg.model.lora.r,
                          int(os.environ.get("WORLD_SIZE", "1")))
    first_rank = int(os.environ.get("RANK", "0")) == 0  # rank 0 holds the claim for all ranks
    claim = (claim_run_dir(cfg.run_dir, resume=cfg.trainer.resume != "none", overwrite=cfg.overwrite,
                           what="RL run") if first_rank else contextlib.nullcontext())
    with claim:
        if warm:
            cfg = sft_warm_start(cfg)
            model, tokenizer = load_model(cfg.model, cfg.rollout.block_length)
        run = setup(cfg, model, tokenizer, task, splits, reward_cfg)
        try:
            restore(run, resume_from)
            start_rollouts(run)
            loop(run)
        except (KeyboardInterrupt, interrupts.Interrupted) as exc:  # SIGTERM / Ctrl-C: say where to resume
            newest = complete_checkpoints(cfg.run_dir)
            raise interrupts.Interrupted(interrupts.as_interrupted(exc).code, (
                f"interrupted at step {run.progress.step}; the newest checkpoint is "
                f"{newest[-1] if newest else 'none yet'}; resume with trainer.resume=auto")) from None
        finally:
            close(run)
        return finish(run, started)


# --- setup: model, engine, objective, workers -------------------------------------------------------

def setup(cfg: Config, model, tokenizer, task, splits, reward_cfg) -> RLRun:
    tr = cfg.trainer
    write_resolved(cfg, cfg.run_dir)
    model, tokenizer, base_dir = base_weights(cfg, model, tokenizer)  # the workers load base_dir
    model, family = make_trainable(cfg, model)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # several processes: each trains 1/world of the prompts
    micro_batches = math.ceil(tr.prompts_per_step // world_size * cfg.rollout.group_size / tr.micro_batch_size)
    progress, budget = Progress(), Budget(tr.steps, tr.max_seconds)  # the cosine schedule reads how far it has come
    engine, optimizer = build_engine(
        model, deepspeed_config_path(tr.deepspeed, "trainer.deepspeed"), lr=tr.lr, weight_decay=tr.weight_decay,
        warmup_steps=tr.warmup_steps, grad_clip=tr.grad_clip, micro_batch_size=1, grad_accum=micro_batches,
        schedule=tr.lr_schedule, optimizer_name=tr.optimizer, progress=lambda: budget.used(progress))
    rank, world = rank_and_world()
    policy = make_policy(engine.module, tokenizer, cfg.model.shift_logits)
    objective = build_objective(tr.objective_name, cfg.objective_settings())  # its Settings, from trainer.objective
    learner = Learner(engine, optimizer, policy, objective, micro_batches, tr.inner_steps, cfg.model.lora.enabled,
                      world)
    run = RLRun(cfg, task, splits["train"], splits["test"], tokenizer, learner, RewardRunner(reward_cfg),
                PromptSchedule(len(splits["train"]), tr.prompts_per_step, cfg.seed), base_dir, progress, rank, world)
    if rank == 0 or not run.ray_serves_all_ranks:
        run.workers = start_workers(
            PolicySpec(path=base_dir, lora=peft_lora_config(cfg.model.lora, family) if run.lora else None,
                       shift_logits=cfg.model.shift_logits, family=cfg.model.family,
                       trust_remote_code=cfg.model.trust_remote_code, dtype=cfg.model.dtype,
                       attention_block=cfg.rollout.block_length),
            run.decoding, num_workers=cfg.ray.num_workers if cfg.ray.enabled else 1,
            use_ray=cfg.ray.enabled, address=cfg.ray.address, threads=cfg.ray.threads_per_worker,
            placement=cfg.ray.placement, connect_timeout_s=cfg.ray.connect_timeout_s, gpus=cfg.ray.gpus_per_worker)
        interrupts.install()  # ray.init may have put its own SIGTERM handler in place
    print(f"train {task.name} with {tr.objective_name}: {count_parameters(engine.module) / 1e6:.2f} M parameters "
          f"({count_parameters(engine.module, trainable_only=True) / 1e6:.3f} M trainable), "
          f"{'Ray' if cfg.ray.enabled else 'in-process'} rollouts, {run.loop_kind}, {world} trainer process(es), "
          f"run dir {cfg.run_dir}")
    return run


def trainer_sample(run: RLRun, jobs: list[SampleJob]) -> list[Trajectory]:
    """Sample `jobs` with the trainer's own (newest) weights, in eval mode as the workers are."""
    module = run.learner.engine.module
    training = module.training
    module.eval()  # dropout off, as in the workers
    try:
        return sample_jobs(run.learner.policy, run.decoding, jobs, run.progress.version)
    finally:
        module.train(training)


def start_rollouts(run: RLRun) -> None:
    """Give the workers the trainer's weights, then start the batch source (sync or async) and the
    group collector. Its extra answers: hints are drawn by the workers — in an asynchronous run by
    the producer, right after it sampled the batch, with that batch's weights, so they overlap the
    update; further prompts (dynamic sampling) by the workers in a synchronous run, by the trainer
    itself, with its newest weights, in an asynchronous one."""
    cfg, workers = run.cfg, run.workers
    asynchronous = cfg.rollout.async_

    def sample_now(jobs: list[SampleJob]) -> list[Trajectory]:
        if workers is not None and not asynchronous.enabled:
            return workers.sample_jobs(jobs)
        return trainer_sample(run, jobs)

    def grown(sample):  # each prompt's tree (rollout.branching), grown by whoever samples its roots
        return lambda jobs: sample_tree(sample, jobs, cfg.rollout.branching, cfg.rollout.group_size)

    run.collector = GroupCollector(cfg, run.task, run.train, run.tokenizer, run.rewarder,
                                   run.learner.policy.ids.stop, sample_now, run.rank, run.world)
    engine = run.learner.engine
    weights = trainer_weights(engine.module, zero_stage(engine))  # a collective under ZeRO-3
    if workers is None:
        return
    workers.sync(weights, run.progress.version)
    tolerate = asynchronous.enabled  # stamped rollouts: a worker left behind makes stale ones, not wrong ones

    def plan(step: int) -> tuple[list[int], list[SampleJob]]:
        indices = run.schedule.indices(step)
        if not run.ray_serves_all_ranks:
            indices = indices[run.rank::run.world]  # each rank samples its own prompts
        prompts = [encode_prompt(run.tokenizer, p, cfg.data.chat_template) for p in run.train[indices]["prompt"]]
        return indices, make_jobs(prompts, cfg.rollout.group_size, derive_seed(cfg.seed, step, ROLLOUT))

    def sync(weights: dict, version: int) -> None:
        workers.sync(weights, version, tolerate_failures=tolerate)

    if not asynchronous.enabled:
        run.source = SyncRollouts(plan, grown(workers.sample_jobs), sync, run.clock)
        return

    def waiting_trainer(jobs: list[SampleJob]) -> list[Trajectory]:  # the waiting trainer, its own newer weights
        return trainer_sample(run, jobs)

    def first_round(step: int, indices: list[int], trajectories: list[Trajectory]) -> FirstRound:
        """The producer scores its batch and hints the failed groups with its own workers' weights
        (the batch's version), while the trainer is still updating."""
        groups = split_groups(indices, trajectories, cfg.rollout.group_size)
        return run.collector.first_round(step, groups, sample=workers.sample_jobs, by_producer=True)

    chunks = max(1, min(8, cfg.trainer.prompts_per_step // 2))  # >= 2 prompts' groups per chunk
    run.source = AsyncRollouts(plan, grown(workers.sample_jobs), sync, asynchronous.max_staleness,
                               run.progress.step + 1, cfg.trainer.steps, run.clock,
                               grown(waiting_trainer) if run.trainer_samples else None, chunks,
                               align=cfg.rollout.group_size,
                               prepare=None if run.ray_serves_all_ranks else first_round)


# --- the loop: rollout -> reward -> advantage -> update -> sync -> log -> eval -> save -----------------

def loop(run: RLRun) -> None:
    cfg, tr, progress = run.cfg, run.cfg.trainer, run.progress
    first = progress.step
    if progress.step == 0:
        progress.eval_metrics = run_eval(run)
        progress.before = progress.eval_metrics.get(f"eval/{run.task.name}/acc")
    # the next timed eval is the next multiple of eval_every_s of training time (carried over a resume)
    next_eval_s = (tr.eval_every_s * (math.floor(progress.trained_s / tr.eval_every_s) + 1)
                   if tr.eval_every_s else 0.0)
    by_time = bool(tr.max_seconds)  # a time budget: the bar runs over trained seconds

    def shown(step: int, **fields) -> None:
        bar.update(step, progress.trained_s if by_time else None, **fields)

    bar = PhaseProgress(f"rl {run.task.name}", tr.max_seconds if by_time else tr.steps, initial=progress.step,
                        enabled=cfg.logging.progress, unit="s" if by_time else "step")
    acc = f"eval/{run.task.name}/acc"
    shown(progress.step, acc=progress.eval_metrics.get(acc))
    for step in range(progress.step + 1, tr.steps + 1):
        step_start = time.perf_counter()
        metrics = rl_step(run, step)
        progress.step = step
        if step % tr.log_every == 0 or step == tr.steps:
            run.logger.log(step, metrics)
        # one clock for all ranks: they stop at the same step and the lr schedule reads the same budget
        progress.trained_s = max_over_ranks(progress.trained_s + time.perf_counter() - step_start, run.world)
        shown(step, reward=metrics.get("reward"))
        if tr.max_seconds and progress.trained_s >= tr.max_seconds:
            break
        if (tr.eval_every and step % tr.eval_every == 0 and step != tr.steps) or (
                tr.eval_every_s and progress.trained_s >= next_eval_s):
            progress.eval_metrics = run_eval(run)
            shown(step, acc=progress.eval_metrics.get(acc))
            run.logger.log(step, {"timing_s/trained": progress.trained_s})
            while tr.eval_every_s and next_eval_s <= progress.trained_s:
                next_eval_s += tr.eval_every_s
        if tr.checkpoint_every and step % tr.checkpoint_every == 0 and step != tr.steps:
            checkpoint(run)
    bar.close()
    if progress.step > first:  # the final eval and checkpoint
        progress.eval_metrics = run_eval(run)
        run.logger.log(progress.step, {"timing_s/trained": progress.trained_s})
        checkpoint(run)


def rl_step(run: RLRun, step: int) -> dict:
    """One RL step — rollout → reward → advantages → update → sync — and its metrics (all ranks)."""
    timer = StepTimer(run.clock)
    with timer.time("rollout_wait"):
        rollouts = next_rollouts(run, step)  # sampled now, or earlier by the asynchronous producer
    timer.rollouts(rollouts)
    collected, async_metrics = gather_groups(run, step, rollouts, timer)  # rewards, hints, further prompts
    credit = assign_advantages(run, collected.trained)
    with timer.span("update"):
        result = update(run.learner, training_batch(run, collected.trained, collected.sampled),
                        torch.Generator().manual_seed(derive_seed(run.cfg.seed, step, UPDATE)))
    timer.timing.update(result.timing, **publish(run, result, timer.timeline))
    if run.source is not None:
        run.source.step_done(step)
    metrics = step_metrics(run, step, collected, result, rollouts, {**async_metrics, **credit}, timer.timing,
                           timer.timeline)
    metrics["perf/tokens_per_s"] = metrics["completions/total_tokens"] / max(timer.elapsed(), 1e-9)
    save_rollouts(run, step, collected)
    return metrics


def gather_groups(run: RLRun, step: int, rollouts: Rollouts, timer: StepTimer) -> tuple[StepGroups, dict]:
    """The step's groups: split by prompt (or as the asynchronous producer scored and hinted them),
    too-stale ones dropped, rewards in; groups with equal rewards teach nothing, so hints and further
    prompts come in their place (reasoning/groups.py)."""
    first = rollouts.prepared  # scored and hinted by the asynchronous producer, or None: here
    sampled = first.groups if first is not None else split_groups(rollouts.indices, rollouts.trajectories,
                                                                 run.cfg.rollout.group_size)
    groups, async_metrics = drop_stale(run, sampled)
    async_metrics["async/trainer_sampled_fraction"] = rollouts.trainer_sampled / max(len(rollouts.trajectories), 1)
    with timer.time("reward") as reward:
        collected = run.collector.collect(step, groups, target=len(sampled), first=first)
        reward.exclude(collected.extra_seconds)  # sampling further prompts and hints is not reward time
    return collected, async_metrics


def assign_advantages(run: RLRun, groups: list[Group]) -> dict[str, float]:
    """Group-relative advantages of each group's answers; with branches or intermediate rewards
    also per denoising step (reasoning/credit.py). Returns the step-level metrics."""
    cfg = run.cfg
    return assign_credit(groups, cfg.trainer.normalize_std, cfg.trainer.leave_one_out, run.step_level_credit,
                         cfg.rewards.intermediate, cfg.trainer.std_correction)


def training_batch(run: RLRun, groups: list[Group], sampled: list[Group] = ()) -> StepBatch:
    """The answers of the groups the step trains on, with the advantages set where they were scored,
    and the answers of the other `sampled` groups (no signal; mean_field's d1 normalisation counts them)."""
    trained = {id(g) for g in groups}
    untrained = [t for g in sampled if id(g) not in trained for t in g.trajectories]
    trajectories = [t for g in groups for t in g.trajectories]
    advantages = torch.cat([g.advantages for g in groups]) if groups else torch.zeros(0)
    steps = [a for g in groups for a in g.step_advantages] if run.step_level_credit else None
    return StepBatch(trajectories, advantages, run.decoding, run.learner.policy.ids.stop,
                     policy_version=run.progress.version, step_advantages=steps,
                     rewards=[r for g in groups for r in g.rewards], uninformative=untrained)


def publish(run: RLRun, result: UpdateResult, timeline: dict[str, float]) -> dict[str, float]:
    """A changed policy gets the next version; the synchronous source ships its weights now, while
    the trainer waits (the asynchronous producer ships them itself, between batches)."""
    if not result.updated:
        return {}
    run.progress.version += 1
    engine = run.learner.engine
    weights = trainer_weights(engine.module, zero_stage(engine))  # a collective under ZeRO-3
    synced = run.source.publish(weights, run.progress.version) if run.source is not None else None
    if synced is None:
        return {}
    spans(timeline, sync=synced)
    return {"weight_sync": synced[1] - synced[0]}


def step_metrics(run: RLRun, step: int, collected: StepGroups, result: UpdateResult, rollouts: Rollouts,
                 extra: dict, timing: dict, timeline: dict) -> dict[str, float]:
    """TRL's metric names plus ours (rollout, diffusion, async, timing, timeline), over all ranks."""
    epoch, cursor = run.schedule.position(step)
    workers = run.workers
    metrics = {**collected.reward_metrics, **collected.metrics, **result.metrics,
               **rollout_metrics(rollouts.trajectories, run.learner.policy.ids.stop), **extra,
               **(branch_metrics(collected.sampled) if run.cfg.rollout.branching.enabled else {}),
               "frac_reward_zero_std": 1.0 - collected.metrics["train/informative_fraction"],
               "policy_version": run.progress.version,
               "rollout/worker_restarts": float(workers.restarts if workers is not None else 0),
               "data/epoch": epoch, "data/cursor": cursor, "lr": run.learner.optimizer.param_groups[0]["lr"],
               **{f"timing_s/{k}": v for k, v in timing.items()}, **{f"timeline/{k}": v for k, v in timeline.items()}}
    if workers is not None:
        metrics.update({"rollout/sync_failures": float(workers.sync_failures),
                        "rollout/regenerated_samples": float(workers.regenerated)})
    return combine_metrics(metrics, run.world)


def save_rollouts(run: RLRun, step: int, collected: StepGroups) -> None:
    """Every answer the step sampled (hinted ones and further prompts too), for `dlmrl show`."""
    every = run.cfg.trainer.save_rollouts_every
    if run.rank == 0 and every and (step % every == 0 or step == 1):
        os.makedirs(os.path.join(run.cfg.run_dir, "rollouts"), exist_ok=True)
        save_jsonl([t for g in collected.sampled for t in g.trajectories],
                   os.path.join(run.cfg.run_dir, "rollouts", f"step_{step:06d}.jsonl"))


def next_rollouts(run: RLRun, step: int) -> Rollouts:
    """This rank's rollouts of `step`. With Ray serving several trainer ranks, rank 0 alone talks to
    the workers and broadcasts the batch; every rank then takes its share, so all agree on it."""
    if not run.ray_serves_all_ranks:
        return run.source.get(step)
    import torch.distributed as dist

    box = [run.source.get(step) if run.rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0].share(run.rank, run.world)


def run_eval(run: RLRun) -> dict:
    return evaluate_and_log(run.learner.policy, run.tokenizer, run.task, run.cfg, run.logger, run.progress.step,
                            dataset=run.test)


def close(run: RLRun) -> None:
    if run.source is not None:
        run.source.close()
    run.rewarder.close()
    if run.workers is not None:
        run.workers.shutdown()  # the local Ray instance itself stops with this process (Ray's atexit)
    run.logger.close()
