"""Sample jobs: one answer to draw, with its own seed, so whoever samples it draws the same answer.

A job may continue a recorded trajectory from one of its steps (`start`, a branch: rollouts/branching.py);
the job then carries the parent itself, which travels to a Ray worker like the prompt does.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollouts.decoding import DecodingConfig
from rollouts.sampler import sample, sample_seed
from rollouts.trajectory import Trajectory


@dataclass
class SampleJob:
    """One answer to sample: which prompt, which of its G samples, and the seed of its draws."""

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    seed: int
    pinned: dict[int, int] | None = None
    start: tuple[Trajectory, int] | None = None  # (parent, step): continue the parent from that step's canvas


def sample_jobs(policy, decoding: DecodingConfig, jobs: list[SampleJob], version: int,
                max_batch: int = 256) -> list[Trajectory]:
    """Sample `jobs` with `policy` (at most `max_batch` per call), each trajectory stamped with
    its job's prompt/sample index and the policy `version` that sampled it."""
    out = []
    for lo in range(0, len(jobs), max_batch):
        chunk = jobs[lo:lo + max_batch]
        trajectories = sample(policy, [j.prompt_ids for j in chunk], decoding, seeds=[j.seed for j in chunk],
                              pinned=[j.pinned for j in chunk], starts=[j.start for j in chunk])
        for job, traj in zip(chunk, trajectories):
            traj.prompt_index, traj.sample_index, traj.policy_version = job.prompt_index, job.sample_index, version
            if job.start is not None:
                traj.hinted = job.start[0].hinted  # a branch of a hinted answer holds the same hints
        out.extend(trajectories)
    return out


def make_jobs(prompts: list[list[int]], group_size: int, seed: int,
              pinned: list[dict[int, int] | None] | None = None) -> list[SampleJob]:
    """G jobs per prompt, each with its own seed: whoever samples a job draws the same answer."""
    return [SampleJob(i, g, prompt, sample_seed(seed, i, g), pinned[i] if pinned else None)
            for i, prompt in enumerate(prompts) for g in range(group_size)]
