"""Reward functions for the reward tests, written exactly as for TRL's GRPOTrainer.

A light module of its own: the reward pool's processes import it, so it imports
nothing heavy.
"""

import asyncio
import math
import time

import rewards


@rewards.register("test_length_penalty")
def length_penalty(prompts, completions, answer, **kwargs):
    """Columns arrive as keyword lists, one value per completion."""
    return [1.0 if c.strip() == a else -0.1 * len(c) for c, a in zip(completions, answer)]


def raising(prompts, completions, **kwargs):
    raise RuntimeError("boom")


def sleeping(prompts, completions, **kwargs):
    time.sleep(60)
    return [1.0] * len(completions)


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def not_numbers(prompts, completions, **kwargs):
    return [1.0, "high", 0.0][: len(completions)]


def half_opinion(prompts, completions, **kwargs):
    return [None if i % 2 else 2.0 for i in range(len(completions))]


async def async_reward(prompts, completions, **kwargs):
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]


def digit_fraction(prompts, completions, **kwargs):
    """A dense reward (varies between samples even for a random model), for RL tests."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def vowel_share(prompts, completions, **kwargs):
    """A graded score (share of vowels) so groups of random answers have reward variance and
    the RL step really updates the adapter. Accepts TRL's chat-format completions too."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch in "aeiouAEIOU" for ch in t) / max(len(t), 1) for t in texts]


def returns_nan(prompts, completions, **kwargs):
    return [float("nan")] * len(completions)


def returns_none(prompts, completions, **kwargs):
    return None


def returns_text(prompts, completions, **kwargs):
    return ["high"] * len(completions)


def returns_too_few(prompts, completions, **kwargs):
    return []


def odd_blanks_digit_fraction(prompts, completions, **kwargs):
    """digit_fraction for sudoku puzzles with an odd number of blanks, 0 for the others: about half
    the groups have no reward variance (for the dynamic-sampling tests)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) if p.split()[-1].count("0") % 2 else 0.0
            for p, c in zip(prompts, completions)]


def steps_seen(prompts, completions, trajectories, **kwargs):
    """A reward that reads the trajectories (passed like TRL's completion_ids): its path's step count."""
    return [float(t.num_steps) for t in trajectories]


def returns_inf(prompts, completions, **kwargs):
    """A score past every bound: handled per on_error (zero scores the batch 0), never trained on."""
    return [math.inf for _ in completions]
