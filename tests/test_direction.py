"""Invariant 12: the loop learns in the right direction. A short run on a learnable reward raises
it; the same run with the advantages' sign flipped where the loop uses them lowers it. Nothing
else checks the sign end to end: a sign error in advantages, ratio or loss would pass every
unit test that reuses the code it checks."""

import pytest

import reasoning.rl
from reasoning.advantages import Advantages, group_advantages
from reasoning.config import load_config
from reasoning.rl import run_rl

from test_rl import TINY, train_steps

LEARNABLE = [*TINY, "rewards=[{fn: 'reward_fns:digit_fraction'}]", "trainer.steps=10", "trainer.lr=0.05",
             "trainer.prompts_per_step=4", "rollout.group_size=8", "trainer.micro_batch_size=32", "eval.n=4"]


def reward_change(tmp_path, name, objective):
    cfg = load_config(None, [f"output_dir={tmp_path}", f"name={name}", *LEARNABLE, f"trainer.objective={objective}",
                             "trainer.inner_steps=1"])
    run_rl(cfg)
    rewards = [m["reward"] for m in train_steps(cfg.run_dir)]
    return sum(rewards[-3:]) / 3 - sum(rewards[:3]) / 3


# Only the default objective so far: in this 10-step run the answer-token objectives (mean_field,
# coupled, spg, wd1 at μ 1) moved the reward by less than ±0.006 either way, too little to tell a
# direction (measured 2026-12-06); each needs a run it learns in, which is issue 24's next step.
@pytest.mark.parametrize("objective", ["trajectory"])
def test_the_loop_raises_a_learnable_reward_and_the_flipped_sign_lowers_it(tmp_path, monkeypatch, objective):
    assert reward_change(tmp_path, "forward", objective) > 0.01

    def flipped(*args, **kwargs) -> Advantages:
        adv = group_advantages(*args, **kwargs)
        return Advantages(-adv.values, adv.keep, adv.frac_zero_std)

    monkeypatch.setattr(reasoning.rl, "group_advantages", flipped)
    assert reward_change(tmp_path, "flipped", objective) < -0.01
