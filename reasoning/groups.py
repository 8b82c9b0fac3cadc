"""Which groups an RL step learns from: scoring, inpainting hints (IGPO) and dynamic sampling (DAPO).

A group is one prompt's G answers. Group-relative advantages are all zero when the G rewards are
equal, so such a group teaches nothing; on make run's sudoku4 82-89 % of groups are like that,
about 40 % of prompts failing in all G samples. Two remedies, each off by default (make run's config turns the hints on):

  hints (`rollout.hints`, IGPO, arXiv 2509.10396): for a group whose every reward is at most
      `fail_reward`, sample `samples` extra answers with chunks of the task's reference answer
      pinned into the canvas — the reference cut left to right into chunks of UniformInt[lo, hi]
      tokens, ⌊n·(1−η)⌋ of them hidden (never the last, as IGPO's code), η ~ U[ratio] per answer,
      the rest written at their own positions. Of the hinted answers that score higher than the
      group's best, up to ⌊replace_fraction·G⌋ (a seeded random subset when more) take the places
      of answers 0, 1, … of the group, which is then scored as it stands.
  dynamic sampling (`rollout.dynamic_sampling`, DAPO, arXiv 2503.14476): while fewer than the
      step's prompts_per_step groups have reward variance, draw another round of prompts (at most
      max_draw_factor × prompts_per_step in all), sample and score them (with hints, if on);
      the step trains the first prompts_per_step informative groups in draw order.

What is exact and what is not about training on a hinted answer: every token the policy wrote is
scored at the state it was written from, and that state holds the hints, so the log-probs (and
the first PPO ratio, 1) are exactly those of the policy *given the hints*. The answer was not
drawn from the unhinted policy the task is solved with, and no importance weight corrects for
that (IGPO has none either): a hinted answer is an off-distribution demonstration the policy
completed itself. Pinned tokens are not actions: by default (`train_hints: none`) no objective
puts any gradient on them (reasoning/objectives/base.py `answer_mask`); `train_hints: entropy`
trains the highest-entropy fraction of them, scored from the fully masked canvas as IGPO does.

Every draw derives from (seed, step, …) (rollouts/seeding.py), so a resumed run repeats it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from reasoning.credit import right_then_lost
from reasoning.data import decode_completion, encode_prompt
from rollouts import Trajectory
from rollouts.branching import sample_tree
from rollouts.sampler import sample_seed
from rollouts.seeding import EXTRA_PROMPTS, HINTS, derive_seed
from rollouts.jobs import SampleJob, make_jobs

Sampler = Callable[[list[SampleJob]], list[Trajectory]]  # jobs -> trajectories, in the jobs' order


@dataclass
class Group:
    """One prompt's answers (G, or G roots and their branches), made once where the samples come
    back and carried to the update: stale groups are dropped, rewards scored, hints swapped in and
    advantages set on it."""

    index: int  # the prompt's row in the train split
    trajectories: list[Trajectory]  # its answers (each knows its prompt ids, sample index and branch lineage)
    rewards: list[float] = field(default_factory=list)  # total reward per answer, once scored
    completions: list = field(default_factory=list)  # the decoded answers the rewards saw
    advantages: torch.Tensor | None = None  # (N,) group-relative, once set (reasoning/rl.py)
    step_advantages: list[np.ndarray] | None = None  # [i]: (T_i,) per denoising step (reasoning/credit.py)
    step_rewards: np.ndarray | None = None  # (N, K) rewards of ŷ_t at rewards.intermediate.at (nan: path shorter)
    staleness: int = 0  # policy versions its oldest answer is behind the trainer
    hinted: int = 0  # how many answers are hinted ones
    first_outcome: str = ""  # all_fail / all_pass: its first-round rewards were all equal (before hints)

    @property
    def varied(self) -> bool:
        """The rewards differ, or (intermediate rewards) some chosen step's rewards do."""
        if max(self.rewards) - min(self.rewards) > 1e-8:
            return True
        if self.step_rewards is None or not self.step_rewards.size:
            return False
        columns = [c[np.isfinite(c)] for c in self.step_rewards.T]
        return any(len(c) and c.max() - c.min() > 1e-8 for c in columns)


def split_groups(indices: list[int], trajectories: list[Trajectory], group_size: int) -> list[Group]:
    """The groups of a batch of rollouts: prompt k's answers are those with the k-th smallest
    prompt_index (G each, more with branches), in sample order."""
    by_prompt: dict[int, list[Trajectory]] = {}
    for traj in trajectories:
        by_prompt.setdefault(traj.prompt_index, []).append(traj)
    if len(by_prompt) != len(indices) or any(len(v) < group_size for v in by_prompt.values()):
        raise ValueError(f"{len(trajectories)} trajectories do not make {len(indices)} groups of at least "
                         f"{group_size}")
    return [Group(index, sorted(by_prompt[key], key=lambda t: t.sample_index))
            for index, key in zip(indices, sorted(by_prompt))]


@dataclass
class FirstRound:
    """A step's first-round groups, scored and (with hints) hinted. In an asynchronous run the rollout
    producer does this right after sampling them, so it overlaps the trainer's update."""

    groups: list[Group]
    reward_metrics: dict[str, float]
    stats: Counter
    by_producer: bool = False


@dataclass
class StepGroups:
    """What a step trains on (`trained`), everything it sampled (`sampled`), and their metrics."""

    trained: list[Group]
    sampled: list[Group]
    reward_metrics: dict[str, float]  # the reward functions' metrics on the step's first-round answers
    metrics: dict[str, float] = field(default_factory=dict)
    extra_seconds: float = 0.0  # spent on hints and further prompts (not reward time)


def hint_pins(reference: list[int], ratio: tuple[float, float], chunk: tuple[int, int],
              rng: np.random.Generator) -> dict[int, int]:
    """IGPO's chunked hint: {position: token} of the revealed chunks of `reference`."""
    bounds, start = [], 0
    while start < len(reference):
        size = int(rng.integers(chunk[0], chunk[1] + 1))
        bounds.append((start, min(start + size, len(reference))))
        start += size
    eta = float(rng.uniform(ratio[0], ratio[1]))
    hide = min(math.floor(len(bounds) * (1 - eta)), len(bounds) - 1)  # the last chunk is always revealed
    hidden = set(rng.choice(len(bounds) - 1, size=hide, replace=False).tolist()) if hide > 0 else set()
    return {p: reference[p] for c, (lo, hi) in enumerate(bounds) if c not in hidden for p in range(lo, hi)}


class GroupCollector:
    """Scores a step's groups and, when configured, adds hints and further prompts.

    `sample` draws answers for extra jobs (the rollout workers, or the trainer's own policy in
    asynchronous runs); it stamps each with the policy version that drew it."""

    def __init__(self, cfg, task, train, tokenizer, rewarder, stop: tuple[int, ...], sample: Sampler,
                 rank: int = 0, world: int = 1):
        self.cfg, self.task, self.train, self.tokenizer, self.rewarder = cfg, task, train, tokenizer, rewarder
        self.stop, self.sample, self.rank, self.world = stop, sample, rank, world
        self.hints = cfg.rollout.hints if cfg.rollout.hints.enabled else None
        self.intermediate = cfg.rewards.intermediate
        self.dynamic = cfg.rollout.dynamic_sampling
        self.group_size = cfg.rollout.group_size
        self._references: dict[int, list[int] | None] = {}
        if self.hints and len(train) and not self._has_references():
            self.hints = None

    def _has_references(self) -> bool:
        try:
            self.task.reference(self.train[0])
            return True
        except Exception as exc:  # noqa: BLE001 — any task without references: warn once, go on
            warnings.warn(f"rollout.hints: task '{self.task.name}' has no reference answers ({exc}); "
                          f"sampling without hints", stacklevel=3)
            return False

    # --- scoring ---------------------------------------------------------------------------

    def score(self, rows: list[int], trajectories: list[Trajectory], tokens: list | None = None):
        """(the configured rewards of each trajectory, their decoded completions); `rows[i]` is
        trajectory i's train row. `tokens` (default: the final answers) are what gets scored."""
        data = self.train.select(rows)
        tokens = [t.final_tokens for t in trajectories] if tokens is None else tokens
        completions = [decode_completion(self.tokenizer, ids, self.stop) for ids in tokens]
        columns = {c: data[c] for c in data.column_names if c != "prompt"}
        return self.rewarder(data["prompt"], completions, [list(map(int, ids)) for ids in tokens],
                             trajectories=trajectories, **columns), completions

    def score_groups(self, groups: list[Group]) -> dict[str, float]:
        """Fill each group's rewards and completions (and intermediate rewards, when configured);
        returns the reward functions' metrics."""
        scored, completions = self.score([grp.index for grp in groups for _ in grp.trajectories],
                                         [t for grp in groups for t in grp.trajectories])
        lo = 0
        for grp in groups:
            hi = lo + len(grp.trajectories)
            grp.rewards, grp.completions = list(scored.total[lo:hi]), completions[lo:hi]
            lo = hi
        if self.intermediate.enabled:
            self.score_intermediate(groups)
        return scored.metrics

    def score_intermediate(self, groups: list[Group]) -> None:
        """rewards.intermediate: each answer's one-forward completion ŷ_t at the chosen steps, scored
        by the same rewards (nan where the path has fewer steps)."""
        at = self.intermediate.at
        where = [(g, i, k) for g, grp in enumerate(groups) for i, t in enumerate(grp.trajectories)
                 for k, step in enumerate(at) if step < t.num_steps]
        for grp in groups:
            grp.step_rewards = np.full((len(grp.trajectories), len(at)), np.nan)
        if not where:
            return
        trajectories = [groups[g].trajectories[i] for g, i, _ in where]
        tokens = [t.step_prediction[at[k]] for t, (_, _, k) in zip(trajectories, where)]
        scored, _ = self.score([groups[g].index for g, _, _ in where], trajectories, tokens)
        for value, (g, i, k) in zip(scored.total, where):
            groups[g].step_rewards[i, k] = value

    def failed(self, group: Group) -> bool:
        fail = self.hints.fail_reward if self.hints else 0.0
        return max(group.rewards) <= fail

    # --- the step ----------------------------------------------------------------------------

    def first_round(self, step: int, groups: list[Group], sample: Sampler | None = None,
                    by_producer: bool = False) -> FirstRound:
        """Score the step's first-round `groups` and add hints to the failed ones, sampled by
        `sample` (default: the collector's own)."""
        stats: Counter = Counter()
        reward_metrics = self.score_groups(groups)
        t0 = time.perf_counter()
        self._count(groups, stats)
        if self.hints:
            self.add_hints(step, 0, groups, stats, sample)
        stats["timing_hints"] += time.perf_counter() - t0
        return FirstRound(list(groups), reward_metrics, stats, by_producer)

    def collect(self, step: int, groups: list[Group], target: int, first: FirstRound | None = None) -> StepGroups:
        """The step's groups: its first-round `groups` scored and hinted (here, or already by the
        producer: `first`), then further rounds until `target` groups (the step's share of
        prompts_per_step) have reward variance."""
        if first is None:
            first = self.first_round(step, groups)
        stats = Counter({k: v for k, v in first.stats.items() if k not in ("all_fail", "all_pass")})
        for g in groups:  # the kept ones (stale groups may have been dropped since)
            stats[g.first_outcome] += bool(g.first_outcome)
        groups, reward_metrics = list(groups), first.reward_metrics
        if self.dynamic.enabled:
            t0 = time.perf_counter()
            self.draw_more(step, groups, target, stats)
            stats["timing_dynamic"] = time.perf_counter() - t0
        trained = [g for g in groups if g.varied]
        if self.dynamic.enabled:
            trained = trained[:target]
        n = max(len(groups), 1)
        metrics = {"train/informative_fraction": sum(g.varied for g in groups) / n,
                   "train/all_fail_fraction": stats["all_fail"] / n, "train/all_pass_fraction": stats["all_pass"] / n,
                   "train/hinted_samples": float(sum(g.hinted for g in trained))}
        if self.hints:
            drawn = max(stats["hint_samples"], 1)
            metrics.update({"hints/groups": float(stats["hint_groups"]), "hints/samples": float(stats["hint_samples"]),
                            "hints/ratio_mean": stats["hint_ratio"] / drawn,
                            "hints/success_rate": stats["hint_better"] / drawn,
                            "hints/replaced": float(stats["hint_replaced"]),
                            "timing_s/hints": stats["timing_hints"]})
        if self.intermediate.enabled:
            scored = [g for g in groups if g.step_rewards is not None]
            values = np.concatenate([g.step_rewards.ravel() for g in scored]) if scored else np.zeros(0)
            lost = [right_then_lost(g.rewards, g.step_rewards) * len(g.rewards) for g in scored]
            metrics.update({"intermediate/reward_mean": float(np.nanmean(values)) if np.isfinite(values).any() else 0.0,
                            "intermediate/right_then_lost": sum(lost) / max(sum(len(g.rewards) for g in scored), 1)})
        if self.dynamic.enabled:
            metrics.update({"dynamic/draw_factor": len(groups) / max(target, 1), "dynamic/rounds": float(stats["rounds"]),
                            "timing_s/dynamic": stats["timing_dynamic"]})
        here = stats["timing_hints"] if self.hints and not first.by_producer else 0.0
        return StepGroups(trained, groups, reward_metrics, metrics, extra_seconds=here + stats["timing_dynamic"])

    def _count(self, groups: list[Group], stats: Counter) -> None:
        for g in groups:
            if not g.varied:
                g.first_outcome = "all_fail" if self.failed(g) else "all_pass"
                stats[g.first_outcome] += 1

    def draw_more(self, step: int, groups: list[Group], target: int, stats: Counter) -> None:
        """Dynamic sampling: further rounds of prompts until `target` groups have reward variance."""
        budget = math.floor(self.dynamic.max_draw_factor * target)
        taken = {g.index for g in groups}
        order = iter(torch.randperm(len(self.train), generator=torch.Generator().manual_seed(
            derive_seed(self.cfg.seed, step, EXTRA_PROMPTS, self.rank))).tolist())
        total = self.cfg.trainer.prompts_per_step
        while sum(g.varied for g in groups) < target and len(groups) < budget:
            stats["rounds"] += 1
            rnd = stats["rounds"]
            indices = []
            for index in order:
                if index not in taken:
                    indices.append(index)
                    taken.add(index)
                if len(indices) == min(target, budget - len(groups)):
                    break
            if not indices:  # the train split is used up
                return
            prompts = [encode_prompt(self.tokenizer, p, self.cfg.data.chat_template)
                       for p in self.train.select(indices)["prompt"]]
            jobs = make_jobs(prompts, self.group_size, derive_seed(self.cfg.seed, step, EXTRA_PROMPTS, self.rank, rnd))
            for job in jobs:  # unique (prompt, sample) ids over rounds and ranks
                job.prompt_index = rnd * total + job.prompt_index * self.world + self.rank
            new = split_groups(indices, sample_tree(self.sample, jobs, self.cfg.rollout.branching, self.group_size),
                               self.group_size)
            self.score_groups(new)
            self._count(new, stats)
            if self.hints:
                self.add_hints(step, rnd, new, stats)
            groups.extend(new)

    # --- hints -------------------------------------------------------------------------------

    def reference(self, index: int) -> list[int] | None:
        """The reference answer's tokens, then [EOS], cut to the canvas (None: this row has none)."""
        if index not in self._references:
            try:
                text = self.task.reference(self.train[index])
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
                self._references[index] = ids[:self.cfg.rollout.gen_length] or None
            except Exception:  # noqa: BLE001 — a row without a usable reference gets no hints
                self._references[index] = None
        return self._references[index]

    def add_hints(self, step: int, rnd: int, groups: list[Group], stats: Counter, sample: Sampler | None = None) -> None:
        """IGPO: hinted answers for every failed group; better-scoring ones replace failed answers."""
        h, g = self.hints, self.group_size
        failed = [(k, grp) for k, grp in enumerate(groups) if self.failed(grp) and self.reference(grp.index)]
        if not failed:
            return
        n = h.samples or g
        base = derive_seed(self.cfg.seed, step, HINTS, self.rank, rnd)
        jobs, ratios = [], []
        for k, grp in failed:
            reference = self.reference(grp.index)
            prompt = encode_prompt(self.tokenizer, self.train[grp.index]["prompt"], self.cfg.data.chat_template)
            for s in range(n):
                seed = sample_seed(base, k, s)
                pins = hint_pins(reference, tuple(h.ratio), tuple(h.chunk), np.random.default_rng([seed, 1]))
                jobs.append(SampleJob(k, s, prompt, seed, pins))
                ratios.append(len(pins) / len(reference))
        hinted = (sample or self.sample)(jobs)
        scored, completions = self.score([groups[k].index for k, _ in failed for _ in range(n)], hinted)
        limit = math.floor(h.replace_fraction * g)
        stats.update(hint_groups=len(failed), hint_samples=len(jobs))
        stats["hint_ratio"] += sum(ratios)
        for f, (k, grp) in enumerate(failed):
            rewards = scored.total[f * n:(f + 1) * n]
            better = [s for s in range(n) if rewards[s] > max(grp.rewards) + 1e-8]
            stats["hint_better"] += len(better)
            if len(better) > limit:
                rng = np.random.default_rng([base, k, 2])
                better = sorted(rng.choice(better, size=limit, replace=False).tolist())
            for slot, s in enumerate(better):
                traj, old = hinted[f * n + s], grp.trajectories[slot]
                traj.prompt_index, traj.sample_index, traj.hinted = old.prompt_index, old.sample_index, True
                grp.trajectories[slot], grp.rewards[slot] = traj, rewards[s]
                grp.completions[slot] = completions[f * n + s]
            grp.hinted = len(better)
            stats["hint_replaced"] += len(better)
        if self.intermediate.enabled:  # the hinted answers' own intermediate completions
            self.score_intermediate([grp for _, grp in failed if grp.hinted])
