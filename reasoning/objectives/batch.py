"""The batch an update trains on (`StepBatch`), and the per-sample masks every objective uses."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rollouts import DecodingConfig, DiffusionPolicy, Trajectory
from rollouts.decoding import left_pad
from rollouts.seeding import derive_seed


@dataclass
class StepBatch:
    """What one RL step hands its update: the kept answers and the advantages computed where their
    rewards came back (reasoning/rl.py); no objective re-derives them."""

    trajectories: list[Trajectory]
    advantages: torch.Tensor  # (N,) each answer's (leaf) advantage: what answer-token objectives weight
    decoding: DecodingConfig
    stop: tuple[int, ...] = ()  # ids that end an answer (the loss mask runs up to and including the first)
    policy_version: int | None = None  # the trainer's version at this update (None: every sample is fresh)
    # [i]: (T_i,) advantage of each denoising step of answer i (reasoning/credit.py: tree segments,
    # intermediate rewards); None = every step takes the answer's advantage
    step_advantages: list[np.ndarray] | None = None
    rewards: list[float] | None = None  # each answer's total reward (for logs and objectives that read it)
    # the step's answers whose group had no reward variance (not trained): d1's normalisation counts
    # their tokens too (mean_field `normalize: batch`)
    uninformative: list[Trajectory] = field(default_factory=list)

    def stale(self) -> list[int]:
        """Samples drawn by an older policy than the one being updated (asynchronous RL)."""
        if self.policy_version is None:
            return []
        return [i for i, t in enumerate(self.trajectories) if t.policy_version < self.policy_version]



def sample_generators(batch: StepBatch, generator: torch.Generator) -> list[torch.Generator]:
    """One generator per sample, seeded from the update's generator and the sample's (prompt, sample)
    index: a sample's masks do not depend on which micro-batch or rank it lands in."""
    base = int(torch.randint(2 ** 62, (1,), generator=generator))
    return [torch.Generator().manual_seed(derive_seed(base, t.prompt_index, t.sample_index))
            for t in batch.trajectories]


def loss_mask(trajectory: Trajectory, stop: tuple[int, ...]) -> torch.Tensor:
    """(L,) bool: the answer up to and including its first stop token (all of it if none)."""
    final = torch.as_tensor(trajectory.final_tokens)
    is_stop = torch.isin(final, torch.tensor(stop or (-1,)))
    after = is_stop.long().cumsum(0) - is_stop.long()  # stops strictly before each position
    return after == 0


def pinned_mask(trajectory: Trajectory) -> torch.Tensor:
    """(L,) bool: positions pinned before decoding (hints, or pins the caller gave): not the policy's."""
    out = torch.zeros(trajectory.gen_length, dtype=torch.bool)
    out[torch.as_tensor(trajectory.pinned_position, dtype=torch.long)] = True
    return out


def full_mask_log_probs(policy: DiffusionPolicy, trajectories: list[Trajectory]) -> torch.Tensor:
    """(B, L, V) untempered log-probs with each answer canvas fully masked, the prompt visible (d1's
    one-step canvas, the one IGPO scores hint tokens from)."""
    prompt_ids, prompt_mask = left_pad([t.prompt_ids for t in trajectories], policy.ids.pad)
    answers = torch.stack([torch.full((t.gen_length,), t.mask_id) for t in trajectories])
    device = policy.device
    return policy.step_log_probs(prompt_ids.to(device), prompt_mask.to(device), answers.to(device), 1.0)
