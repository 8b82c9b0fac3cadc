"""Everything a training run checks before it writes a single file (docs/architecture.md, invariant 6).

`dlmrl train` and `dlmrl sft` call these first: the decoding settings that RL can train on, the
data (built, with prompt lengths against the model's context) and the rewards (resolved, and
called once under `on_error: raise`). Only then does a run claim its directory (reasoning/rundir.py).
"""

from __future__ import annotations

import dataclasses
import os

from reasoning.config import Config
from reasoning.data import encode_prompt
from reasoning.schema import ConfigError, setting_error
from reasoning.tasks import get_task
from rewards import RewardRunner, RewardSpec


def require_training_rows(cfg: Config) -> None:
    if cfg.data.train_size < 1:
        raise ConfigError(f"config key 'data.train_size': expected >= 1 for training, got {cfg.data.train_size}")


def check_rollout_temperature(objective: str, decoding) -> None:
    """At T = 0 every token is the argmax: none was sampled, so no token log-prob may be trained.
    Only a learned (Plackett–Luce) position choice is left to train, by the trajectory objective."""
    from reasoning.objectives import objective_class

    if decoding.temperature > 0:
        return
    if objective_class(objective).trains_without_sampled_tokens(decoding):
        print("note: rollout.temperature 0 — tokens are the argmax; only the position choice is trained")
        return
    raise ConfigError("config key 'rollout.temperature': RL rollouts at temperature 0 sample no token, so there "
                      "is nothing to train; set rollout.temperature > 0 (or, with objective trajectory, "
                      "rollout.selection_temperature > 0 to train the position choice alone)")


def check_rl_inputs(cfg: Config):
    """(task, splits, reward config), or a ConfigError naming what is wrong — before any file is written."""
    tr = cfg.trainer
    check_rollout_temperature(tr.objective_name, cfg.rollout_decoding())
    if cfg.rollout.group_size < 2:
        raise ConfigError(f"config key 'rollout.group_size': expected >= 2 for RL, got {cfg.rollout.group_size} "
                          f"(advantages are relative to the other answers of the same prompt)")
    require_training_rows(cfg)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and cfg.model.path is None:
        raise ConfigError("config key 'model.path': several trainer processes start from a checkpoint on disk "
                          "(train the SFT warm start in a single process first)")
    if tr.prompts_per_step % world_size:
        raise ConfigError(f"config key 'trainer.prompts_per_step': {tr.prompts_per_step} does not split over "
                          f"{world_size} processes")
    task = get_task(cfg.data.task)
    splits = task.build(cfg.data)
    if len(splits["train"]) == 0:
        raise ConfigError(f"config key 'data': task '{task.name}' has no training rows")
    reward_cfg = cfg.rewards if cfg.rewards.functions else dataclasses.replace(
        cfg.rewards, functions=[RewardSpec(name=task.reward)])
    check_rewards(reward_cfg, task, splits["train"])
    check_credit(cfg, reward_cfg)
    check_hints(cfg, task, splits["train"])
    if cfg.ray.enabled and cfg.ray.address != "local" and int(os.environ.get("RANK", "0")) == 0:
        from rollouts.workers import connect_ray  # a cluster that is not there: a clear error now, not a hang

        try:
            connect_ray(cfg.ray.address, timeout_s=cfg.ray.connect_timeout_s)
        except (ValueError, ConnectionError) as exc:
            raise (setting_error(exc, "ray") or exc) from None
    return task, splits, reward_cfg


def check_hints(cfg: Config, task, train) -> None:
    """Hints pin chunks of the task's reference answer: a task without references cannot give any."""
    if not cfg.rollout.hints.enabled:
        return
    try:
        task.reference(train[0])
    except Exception as exc:  # noqa: BLE001 — whatever the task raises, it has no reference for this row
        raise ConfigError(f"config key 'rollout.hints.enabled': task '{task.name}' has no reference answers to "
                          f"hint with ({str(exc)[:120]}); turn hints off or give the rows reference answers") from None


def check_credit(cfg: Config, reward_cfg) -> None:
    """Branching, intermediate rewards and trajectory rewards fit the rollout they read."""
    from rewards.registry import get

    steps = cfg.rollout.total_steps
    past = [t for t in cfg.rewards.intermediate.at if t >= steps]
    if past:
        raise ConfigError(f"config key 'rewards.intermediate.at': step(s) {past} are past the rollout's path of "
                          f"{steps} steps (rollout.steps; steps are numbered 0 .. {steps - 1})")
    if cfg.rollout.branching.enabled and cfg.trainer.leave_one_out:
        raise ConfigError("config key 'trainer.leave_one_out': a branching tree baselines each segment by its "
                          "parent node's mean (reasoning/credit.py); set leave_one_out false with rollout.branching")
    for spec in reward_cfg.functions:
        if getattr(get(spec.reference, spec.args), "needs_step_predictions", False) and \
                not (cfg.rollout.record_predictions or cfg.rewards.intermediate.enabled):
            raise ConfigError(f"config key 'rollout.record_predictions': reward '{spec.label}' reads each step's "
                              f"one-forward completion from the trajectories, which this config does not record; "
                              f"set rollout.record_predictions: true")


def check_rewards(reward_cfg, task, train) -> None:
    """Every reward resolves, and is called once on the first two training rows (their reference
    answers, where the task has them) before anything is written: a function that needs a column
    the data lacks, or returns the wrong number or kind of values, is a ConfigError whatever
    `on_error` says (it would fail every step). A function that raises or hangs on those rows
    stops the run here only under `on_error: raise`; otherwise `on_error` handles it per step."""
    from rewards import RewardError

    try:
        RewardRunner(reward_cfg).close()
    except ValueError as exc:
        raise (setting_error(exc, "rewards") or ConfigError(str(exc))) from None
    rows = [train[i] for i in range(min(2, len(train)))]
    completions = []
    for row in rows:
        try:
            completions.append(task.reference(row))
        except Exception:  # noqa: BLE001 — a task without references: an empty answer will do
            completions.append("")
    columns = {c: [row[c] for row in rows] for c in train.column_names if c != "prompt"}
    strict = dataclasses.replace(reward_cfg, on_error="raise")
    try:
        with RewardRunner(strict) as runner:
            runner([row["prompt"] for row in rows], completions, None, **columns)
    except (RewardError, ValueError, TypeError) as exc:
        message = str(exc)
        # the function's own failure on these rows (raising, hanging, a non-finite score): on_error handles it
        behaves = " raised " in message or "timed out" in message or "non-finite score" in message
        if behaves and reward_cfg.on_error != "raise":
            return
        raise ConfigError(f"config block 'rewards' (checked on the first training rows): {message}") from None


def check_decoding(cfg: Config, tokenizer, model) -> None:
    """The rollout decoding fits the model (a block-diffusion model's block length and caches, a
    bidirectional model without `cache: block`), checked before the run directory is claimed."""
    from rollouts import make_policy
    from rollouts.decoding import block_decoding

    policy = make_policy(model, tokenizer, cfg.model.shift_logits)
    for block, decoding in (("rollout", cfg.rollout_decoding()), ("eval.decoding", cfg.eval_decoding())):
        try:
            block_decoding(policy, decoding)
        except ValueError as exc:
            raise (setting_error(exc, block) or ConfigError(f"config block '{block}': {exc}")) from None


def check_prompt_lengths(cfg: Config, tokenizer, model, splits) -> None:
    """The longest prompts (all test rows, the 64 longest training rows by text) plus gen_length fit the
    model's context; otherwise a ConfigError naming the split and row."""
    from rollouts import make_policy

    context = make_policy(model, tokenizer, cfg.model.shift_logits).context_length
    if context is None:
        return
    for split in ("test", "train"):
        rows = splits[split]
        lengths = [len(str(p)) for p in rows["prompt"]]
        candidates = range(len(rows)) if split == "test" else sorted(range(len(rows)), key=lengths.__getitem__)[-64:]
        for i in candidates:
            n = len(encode_prompt(tokenizer, rows[i]["prompt"], cfg.data.chat_template))
            if n + cfg.rollout.gen_length > context:
                raise ConfigError(f"data ({split} row {i}): a prompt of {n} tokens plus rollout.gen_length "
                                  f"{cfg.rollout.gen_length} exceeds the model's context of {context} positions")
