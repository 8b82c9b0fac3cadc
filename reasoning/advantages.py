"""Group-relative advantages (GRPO-style) for G samples per prompt.

Each prompt's G rewards form a group. The baseline is the group mean (or, with
`leave_one_out`, the mean of the other G-1 samples); `normalize_std` divides by the
group's standard deviation. A group whose rewards are all equal carries no learning
signal (every advantage is 0), so it is dropped before the expensive update; the
fraction dropped is logged as `frac_reward_zero_std` (TRL's name).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Advantages:
    values: torch.Tensor  # (P*G,) one per sample, in sample order
    keep: torch.Tensor  # (P*G,) bool: the sample's group has reward variance
    frac_zero_std: float


def group_advantages(rewards: list[float], group_size: int, normalize_std: bool = True,
                     leave_one_out: bool = False, eps: float = 1e-4, std_correction: int = 0) -> Advantages:
    """rewards are ordered prompt-major: [p0 s0, p0 s1, ..., p1 s0, ...]. `std_correction` is the
    std's ddof: 0 = population std (d1, TRL), 1 = Bessel's sample std (JustGRPO)."""
    if group_size < 1 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    if not rewards:  # no group this step (every one was dropped)
        return Advantages(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 0.0)
    r = torch.tensor(rewards, dtype=torch.float64).view(-1, group_size)
    if leave_one_out and group_size > 1:
        baseline = (r.sum(1, keepdim=True) - r) / (group_size - 1)
    else:
        baseline = r.mean(1, keepdim=True)
    adv = r - baseline
    std = r.std(1, keepdim=True, correction=std_correction if group_size > 1 else 0)
    if normalize_std:
        adv = adv / (std + eps)
    varied = (std > 1e-8).expand_as(r)
    return Advantages(values=adv.flatten().float(), keep=varied.flatten(),
                      frac_zero_std=float((~varied[:, 0]).float().mean()))
