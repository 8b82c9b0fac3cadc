"""Invariant 12: the loop learns in the right direction. A short run on a learnable reward raises
it; the same run with the advantages' sign flipped where the loop uses them lowers it. Nothing
else checks the sign end to end: a sign error in advantages, ratio or loss would pass every
unit test that reuses the code it checks."""

import pytest

import reasoning.credit
from reasoning.advantages import Advantages, group_advantages
from reasoning.credit import StepCredit, tree_credit
from reasoning.config import load_config
from reasoning.rl import run_rl

from helpers import TINY, train_steps

LEARNABLE = [*TINY, "rewards=[{fn: 'reward_fns:digit_fraction'}]", "trainer.steps=10", "trainer.lr=0.05",
             "trainer.prompts_per_step=4", "rollout.group_size=8", "trainer.micro_batch_size=32", "eval.n=4"]


def flipped(*args, **kwargs) -> Advantages:
    """group_advantages with the sign flipped: patched into reasoning.credit, where the loop uses it."""
    adv = group_advantages(*args, **kwargs)
    return Advantages(-adv.values, adv.keep, adv.frac_zero_std)


def flipped_tree(*args, **kwargs) -> StepCredit:
    """tree_credit (branching: per-step advantages) with the sign flipped."""
    credit = tree_credit(*args, **kwargs)
    return StepCredit(-credit.leaf, [-a for a in credit.steps], credit.segments, credit.nonzero_segments)


def flip(monkeypatch) -> None:
    monkeypatch.setattr(reasoning.credit, "group_advantages", flipped)
    monkeypatch.setattr(reasoning.credit, "tree_credit", flipped_tree)


def run_rewards(tmp_path, name, objective, *extra) -> list[float]:
    cfg = load_config(None, [f"output_dir={tmp_path}", f"name={name}", *LEARNABLE, f"trainer.objective={objective}",
                             "trainer.inner_steps=1", *extra])
    run_rl(cfg)
    return [m["reward"] for m in train_steps(cfg.run_dir)]


def change(rewards: list[float], window: int) -> float:
    return sum(rewards[-window:]) / window - sum(rewards[:window]) / window


def test_the_loop_raises_a_learnable_reward_and_the_flipped_sign_lowers_it(tmp_path, monkeypatch):
    assert change(run_rewards(tmp_path, "forward", "trajectory"), 3) > 0.01

    flip(monkeypatch)
    assert change(run_rewards(tmp_path, "flipped", "trajectory"), 3) < -0.01


# With branches the step reward is the mean over a tree's leaves, which share prefixes: noisier. At the
# plain case's lr 0.05 it did not move either way (measured 2026-12-07). At lr 0.02, G 16, 16 steps it
# moves +0.005 forward and -0.003 flipped (means of the first and last 5 steps), and the second halves
# are 0.094 and 0.070 (measured 2026-12-07).
BRANCHING = ["rollout.branching.enabled=true", "rollout.branching.at=[0.5]", "rollout.branching.budget=100",
             "trainer.steps=16", "trainer.lr=0.02", "rollout.group_size=16"]


def test_with_branching_the_loop_raises_the_reward_and_the_flipped_sign_lowers_it(tmp_path, monkeypatch):
    forward = run_rewards(tmp_path, "forward", "trajectory", *BRANCHING)
    flip(monkeypatch)
    flipped_run = run_rewards(tmp_path, "flipped", "trajectory", *BRANCHING)
    assert change(forward, 5) > 0.002 and change(flipped_run, 5) < -0.002
    assert sum(forward[8:]) / 8 - sum(flipped_run[8:]) / 8 > 0.01


# The answer-token objectives score the final answer's tokens from masked canvases; in 10 steps of the
# run above their sampled reward moved by less than its noise (±0.006 to ±0.03, either way). What they
# train directly is measured instead: the model's digit probability at a fully masked answer (the
# reward counts digits), deterministic given the weights. With 128 answers a step (8 prompts × 16) and
# no KL, 4 steps at lr 0.05 move it by about ±0.012 for each (measured 2026-12-06). SPG needs gentler
# steps: at lr 0.05 its digit probability fell in both directions (−0.012 / −0.013: a sign flip flips
# the first update exactly, so second-order effects decided); at lr 0.02 over 8 steps it moves
# +0.015 / −0.015 (the others: ±0.015 there too).
DIGITS_RUN = [*TINY, "rewards=[{fn: 'reward_fns:digit_fraction'}]", "trainer.steps=4", "trainer.lr=0.05",
              "trainer.prompts_per_step=8", "rollout.group_size=16", "trainer.micro_batch_size=128", "eval.n=4",
              "trainer.normalize_std=true", "trainer.inner_steps=1"]


# 2026-12-07, fresh install: spg at lr 0.02 fell in both directions (-0.012 / -0.015) and wd1 at 0.05 moved
# +0.0006 forward; spg at lr 0.01 over 8 steps moves +0.015 / -0.014, wd1 at 0.02 over 8 steps +0.015 / -0.015
GENTLER = {"spg": ["trainer.lr=0.01", "trainer.steps=8"], "wd1": ["trainer.lr=0.02", "trainer.steps=8"]}


def digit_probability_change(tmp_path, name, objective) -> float:
    import os

    import torch

    from reasoning.checkpoint import complete_checkpoints, load_checkpoint
    from reasoning.data import encode_prompt
    from reasoning.tasks import get_task
    from rollouts import load_pretrained, make_policy
    from rollouts.decoding import left_pad

    cfg = load_config(None, [f"output_dir={tmp_path}", f"name={name}", *DIGITS_RUN,  # no KL: the setting after the name
                             f"trainer.objective={{name: {objective}, kl_coef: 0}}", *GENTLER.get(objective, [])])
    run_rl(cfg)
    trained, tokenizer, _ = load_checkpoint(complete_checkpoints(cfg.run_dir)[-1])
    base = load_pretrained(os.path.join(cfg.run_dir, "base_model"))
    prompts = [encode_prompt(tokenizer, p) for p in get_task("sudoku4").build(cfg.data)["test"]["prompt"][:8]]
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))

    def mass(model) -> float:
        policy = make_policy(model.eval(), tokenizer)
        ids, mask = left_pad(prompts, policy.ids.pad)
        with torch.no_grad():
            logp = policy.step_log_probs(ids, mask, torch.full((len(prompts), 20), policy.ids.mask), 1.0)
        return float(logp.exp()[..., digits].sum(-1).mean())

    return mass(trained) - mass(base)


@pytest.mark.parametrize("objective", ["mean_field", "coupled", "spg", "wd1"])
def test_answer_token_objectives_raise_what_the_reward_counts_and_the_flipped_sign_lowers_it(tmp_path, monkeypatch,
                                                                                          objective):
    assert digit_probability_change(tmp_path, "forward", objective) > 0.005

    flip(monkeypatch)
    assert digit_probability_change(tmp_path, "flipped", objective) < -0.005
