"""Branching rollouts: a tree of answers per prompt, grown from recorded canvases (d-TreeRPO-style).

The G independent samples of a prompt are the roots' paths. At a branch point s of a path the
sampler continues that path's recorded canvas `state_at(s)` K − 1 more times, each continuation
with its own seed and the same weights (rollouts/sampler.py `starts`): with the path's own
continuation that makes K children of the node "canvas entering step s". Every leaf is a complete
trajectory — the shared prefix's events and behaviour log-probs, then its own — so replay,
exactness and the off-policy corrections treat it as any other sample, and `Trajectory.owners()`
says which steps it shares with which other leaf (reasoning/credit.py turns that into step-level
advantages).

Where a path branches (`rule`):
  fixed    at round(f·T) for each fraction f of `at`, T = that path's number of steps;
  entropy  at the `points` steps with the highest mean entropy of the sampler's distribution at the
           tokens committed there (the rule EGSPO-SA picks its steps by).
Several points nest: a path branches at its first point, then every path of that subtree that
reaches the next point branches there, and so on. `budget` bounds the extra sampler forwards of a
prompt's tree (each continuation is charged the steps left on its parent's path); points past it
are not taken. Continuations' seeds derive from (parent seed, point, k), so a resumed run grows
the same tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from rollouts.jobs import SampleJob
from rollouts.seeding import BRANCH, derive_seed
from rollouts.trajectory import Trajectory

SampleFn = Callable[[list[SampleJob]], list[Trajectory]]


@dataclass
class BranchingConfig:
    """How a prompt's answers branch (errors name the setting; the config layer adds its block)."""

    enabled: bool = False
    branches: int = 2  # K children per branch point, the path's own continuation included (K - 1 drawn)
    rule: Literal["fixed", "entropy"] = "fixed"
    at: list[float] = field(default_factory=lambda: [0.5])  # fixed: fractions of each path, in (0, 1)
    points: int = 1  # entropy: branch points per path
    budget: int = 64  # extra sampler forwards per prompt's tree, at most

    def __post_init__(self) -> None:
        if self.branches < 2:
            raise ValueError(f"branching setting 'branches': expected >= 2 children per branch point (the path's "
                             f"own continuation and at least one more), got {self.branches}")
        if self.rule not in ("fixed", "entropy"):
            raise ValueError(f"branching setting 'rule': expected fixed or entropy, got {self.rule!r}")
        if not self.at or any(not (isinstance(f, (int, float)) and 0 < f < 1) for f in self.at):
            raise ValueError(f"branching setting 'at': expected fractions of the path strictly between 0 and 1, "
                             f"got {self.at}")
        if self.points < 1:
            raise ValueError(f"branching setting 'points': expected >= 1, got {self.points}")
        if self.budget < 1:
            raise ValueError(f"branching setting 'budget': expected >= 1 extra forward per prompt, got {self.budget}")

    @property
    def levels(self) -> int:
        return len(self.at) if self.rule == "fixed" else self.points


def branch_points(path: Trajectory, cfg: BranchingConfig) -> list[int]:
    """The steps (ascending, each in 1 .. T-1) where `path` branches."""
    steps = path.num_steps
    if steps < 2:
        return []
    if cfg.rule == "fixed":
        chosen = {min(max(round(f * steps), 1), steps - 1) for f in cfg.at}
    else:
        entropy = path.event_entropy if path.event_entropy is not None else np.full(len(path.event_step), np.nan)
        commits = path.commits & np.isfinite(entropy)
        totals = np.bincount(path.event_step[commits], weights=entropy[commits], minlength=steps)
        counts = np.bincount(path.event_step[commits], minlength=steps)
        mean = np.where(counts > 0, totals / np.maximum(counts, 1), -np.inf)
        mean[0] = -np.inf  # a branch at step 0 is an independent sample: the roots already are
        ranked = [int(s) for s in np.argsort(-mean, kind="stable") if np.isfinite(mean[s])]
        chosen = set(ranked[:cfg.points])
    return sorted(chosen)


def forwards_per_step(path: Trajectory) -> int:
    """Model calls per denoising step (1 + latent-thinking passes)."""
    return max(path.forward_passes // max(path.num_steps, 1), 1)


def extra_forwards(path: Trajectory) -> int:
    """The sampler forwards this trajectory cost beyond its shared prefix (all of them for a root)."""
    return (path.num_steps - path.branch_step) * forwards_per_step(path)


def sample_tree(sample: SampleFn, jobs: list[SampleJob], cfg: BranchingConfig, group_size: int) -> list[Trajectory]:
    """Sample `jobs` (the roots), then grow each root's tree: returns the roots, then the branches.
    A branch's sample_index is (1 + j)·G + its root's, j counting that root's branches."""
    roots = sample(jobs)
    if not cfg.enabled:
        return roots
    spent: dict[int, int] = {}  # prompt -> extra forwards charged so far
    grown: dict[int, int] = {}  # root sample index key -> branches so far
    subtree = {id(r): [r] for r in roots}  # root -> every path of its tree
    points = {id(r): branch_points(r, cfg) for r in roots}
    out = list(roots)
    for level in range(cfg.levels):
        new_jobs, parents = [], []
        for root, job in zip(roots, jobs):
            if level >= len(points[id(root)]):
                continue
            s = points[id(root)][level]
            for parent in subtree[id(root)]:
                if parent.num_steps <= s:
                    continue
                cost = (parent.num_steps - s) * forwards_per_step(parent)
                for k in range(1, cfg.branches):
                    if spent.get(root.prompt_index, 0) + cost > cfg.budget:
                        break
                    spent[root.prompt_index] = spent.get(root.prompt_index, 0) + cost
                    key = (root.prompt_index, root.sample_index)
                    grown[key] = grown.get(key, 0) + 1
                    new_jobs.append(SampleJob(root.prompt_index, grown[key] * group_size + root.sample_index,
                                              job.prompt_ids, derive_seed(parent.seed, BRANCH, s, k),
                                              start=(parent, s)))
                    parents.append((root, parent))
        if not new_jobs:
            break
        for branch, (root, parent) in zip(sample(new_jobs), parents):
            if branch.policy_version != parent.policy_version:
                raise RuntimeError(f"branch of prompt {branch.prompt_index} sampled by policy version "
                                   f"{branch.policy_version}, its prefix by {parent.policy_version}")
            subtree[id(root)].append(branch)
            out.append(branch)
    return out
