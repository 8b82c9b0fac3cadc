"""Credit per denoising step: step-level advantages from a prompt's tree of answers and, optionally,
from the rewards of intermediate canvases' one-forward completions. docs/estimators.md, "Step-level
credit", states the estimators and their bias.

Tree (rollout.branching, rollouts/branching.py). A node is "the canvas entering step s", shared by
the leaves whose events agree on every step before s (`Trajectory.owners`). Its value V is the mean
reward of the leaves below it. Leaf i's steps between two branch points form a segment; every step t
of the segment gets

    A_i(t) = (V(child) − V(parent)) / σ

where parent = the node at the segment's first step, child = the node at its end (the leaf itself
after the last branch point), σ = the std of the tree's leaf rewards (with trainer.normalize_std;
1 otherwise). Without branches every segment is the whole path and A_i(t) = (r_i − mean r)/σ: GRPO.

Intermediate rewards (rewards.intermediate): r_i(t) = reward of ŷ_t, the canvas's one-forward
completion at a chosen step t. Two published uses, each replacing A_i(t) at the chosen steps only:
  egspo  EGSPO-SA's step value R = (r + λ(r − r(t)))/(1 + λ), baselined by the group's mean R at the
         same chosen step (its k-th chosen step): A_i(t) = (R_i − mean R)/σ;
  mdpo   MDPO's adv-v4 a(t) = (r(t) − r(t⁻)) + 1 + mean of the later values (later chosen steps and the
         final reward), r(t⁻) = the previous chosen step's (0 before the first), normalised per chosen
         step over the group, (a − mean a)/(std a + 1e-4); mixed in as (A_i(t) + λ·that)/(1 + λ).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reasoning.advantages import group_advantages
from rollouts import Trajectory


@dataclass
class StepCredit:
    """Per answer: its leaf advantage (answer-token objectives) and per-step advantages (trajectory)."""

    leaf: torch.Tensor  # (N,)
    steps: list[np.ndarray]  # [i]: (T_i,) float32
    segments: int = 0  # path segments in all (a root path without branches is one)
    nonzero_segments: int = 0  # ... with a non-zero advantage


def outcome_scale(rewards: np.ndarray, normalize_std: bool, eps: float = 1e-4, std_correction: int = 0) -> float:
    """1/σ of the leaf rewards (1 when not normalising, or when the rewards are all equal)."""
    std = float(rewards.std(ddof=std_correction if len(rewards) > 1 else 0))
    return 1.0 / (std + eps) if normalize_std and std > 1e-8 else 1.0


def shared_prefix(trajectories: list[Trajectory], i: int, owners: list[np.ndarray]) -> np.ndarray:
    """(N, T_i + 1) bool: leaf j shares the canvas with which leaf i enters step s (s = 0 .. T_i)."""
    mine = owners[i]
    share = np.ones((len(trajectories), len(mine) + 1), dtype=bool)
    for j, theirs in enumerate(owners):
        same = np.zeros(len(mine), dtype=bool)
        m = min(len(theirs), len(mine))
        same[:m] = theirs[:m] == mine[:m]
        share[j, 1:] = np.cumprod(same).astype(bool)
    return share


def tree_credit(trajectories: list[Trajectory], rewards: list[float], normalize_std: bool = True,
                std_correction: int = 0) -> StepCredit:
    """Leaf and step-level advantages of one prompt's answers (a tree, or G independent paths)."""
    r = np.asarray(rewards, dtype=np.float64)
    scale = outcome_scale(r, normalize_std, std_correction=std_correction)
    owners = [t.owners() for t in trajectories]
    steps, segments, nonzero = [], 0, 0
    for i in range(len(trajectories)):
        share = shared_prefix(trajectories, i, owners)
        size = share.sum(0)
        value = (share * r[:, None]).sum(0) / size  # V of the node at each step boundary
        branch = size[:-1] > size[1:]  # leaves part at step s: a branch point
        parent = np.maximum.accumulate(np.where(branch, np.arange(len(branch)), 0)) if len(branch) else branch
        adv = (value[1:] - value[parent]) * scale
        steps.append(adv.astype(np.float32))
        starts = np.flatnonzero(branch)
        segments += len(starts)
        nonzero += int(sum(abs(adv[s]) > 1e-12 for s in starts))
    return StepCredit(torch.tensor((r - r.mean()) * scale, dtype=torch.float32), steps, segments, nonzero)


def intermediate_credit(credit: StepCredit, rewards: list[float], step_rewards: np.ndarray, at: list[int],
                        mode: str, weight: float, normalize_std: bool = True) -> None:
    """Replace the step advantages at the chosen steps `at` by the intermediate-reward estimator
    `mode` (egspo | mdpo). step_rewards: (N, K) rewards of ŷ_t at at[k], nan where a path is shorter."""
    r = np.asarray(rewards, dtype=np.float64)
    scale = outcome_scale(r, normalize_std)
    lam = weight
    for k, t in enumerate(at):
        have = np.isfinite(step_rewards[:, k])
        if have.sum() < 1:
            continue
        if mode == "egspo":
            value = (r + lam * (r - step_rewards[:, k])) / (1 + lam)
            column = (value - value[have].mean()) * scale
        else:
            later = np.concatenate([step_rewards[:, k + 1:], r[:, None]], 1)
            previous = step_rewards[:, k - 1] if k else np.zeros_like(r)
            a = (step_rewards[:, k] - np.nan_to_num(previous)) + 1 + np.nanmean(later, 1)
            normed = (a - a[have].mean()) / (a[have].std() + 1e-4)
            column = None
        for i in np.flatnonzero(have):
            if t >= len(credit.steps[i]):
                continue
            if mode == "egspo":
                credit.steps[i][t] = column[i]
            else:
                credit.steps[i][t] = (credit.steps[i][t] + lam * normed[i]) / (1 + lam)


def right_then_lost(rewards: list[float], step_rewards: np.ndarray) -> float:
    """Fraction of answers whose one-forward completion at some chosen step scored more than the
    final answer did (the model had it, then lost it)."""
    if step_rewards.size == 0:
        return 0.0
    best = np.nanmax(np.where(np.isfinite(step_rewards), step_rewards, -np.inf), 1)
    return float(np.mean(best > np.asarray(rewards) + 1e-8))


def assign_credit(groups, normalize_std: bool, leave_one_out: bool, step_level: bool,
                  intermediate=None, std_correction: int = 0) -> dict[str, float]:
    """Set each group's advantages (and, `step_level`, its per-step advantages); returns the
    step-level metrics. Without branches or intermediate rewards this is GRPO's group advantage."""
    segments = nonzero = 0
    spread = []
    for group in groups:
        if not step_level:
            group.advantages = group_advantages(group.rewards, len(group.rewards), normalize_std,
                                                leave_one_out, std_correction=std_correction).values
            continue
        credit = tree_credit(group.trajectories, group.rewards, normalize_std, std_correction)
        if intermediate is not None and intermediate.enabled and group.step_rewards is not None:
            intermediate_credit(credit, group.rewards, group.step_rewards, intermediate.at, intermediate.mode,
                                intermediate.weight, normalize_std)
        group.advantages, group.step_advantages = credit.leaf, credit.steps
        segments, nonzero = segments + credit.segments, nonzero + credit.nonzero_segments
        spread.extend(float(a) for steps in credit.steps for a in steps)
    if not step_level:
        return {}
    values = np.asarray(spread) if spread else np.zeros(1)
    return {"credit/step_adv_std": float(values.std()), "credit/step_adv_abs_mean": float(np.abs(values).mean()),
            "credit/step_informative_fraction": nonzero / max(segments, 1)}


def branch_metrics(groups) -> dict[str, float]:
    """branch/*: trees (prompts with a branch), branch points, leaves and extra forwards per step."""
    from rollouts.branching import extra_forwards

    trees = points = leaves = extra = 0
    for group in groups:
        branches = [t for t in group.trajectories if t.branch_step > 0]
        trees += bool(branches)
        points += len({(int(t.branch_seeds[-1]), t.branch_step) for t in branches})
        leaves += len(group.trajectories)
        extra += sum(extra_forwards(t) for t in branches)
    n = max(sum(len(g.trajectories) for g in groups), 1)
    return {"branch/trees": float(trees), "branch/points": float(points), "branch/leaves": float(leaves),
            "branch/extra_forwards": float(extra), "branch/extra_forwards_per_answer": extra / n}
