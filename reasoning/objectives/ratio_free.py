"""The ratio-free answer-token estimators: SPG and wd1 (no θ_old, no clip; docs/estimators.md).

  spg  SPG (arXiv 2510.09541; facebookresearch/SPG): per inner step n_t = 2 block-random masks;
       S⁺ = ELBO for A > 0, S⁻ = EUBO (Rényi, β) mixed with the ELBO (ω = 0.5) for A ≤ 0;
       L = Σ_i −A_i·S_i·|y_i| / Σ_i |y_i|. A = r − mean, μ = 4.
  wd1  wd1 (arXiv 2507.08838; xiaohangt/wd1): weighted likelihood; d1's one-step estimate summed
       over the completion, ℓ_i = Σ_k m_k ℓ(k|x̃); L = −Σ_i softmax(A)_i ℓ_i + Σ_i softmax(−A)_i ℓ_i
       within each group. μ = 12. Its unit is a group (the paper sums within a group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reasoning.objectives.answer_tokens import (AnswerTokenObjective, MaskedPromptSettings, MeanFieldObjective,
                                               PromptMasks, masked_prompt)
from reasoning.objectives.base import LossStats, loss_mask, register, sample_generators
from reasoning.schema import ConfigError
from rollouts import Trajectory


@dataclass
class SPGSettings(MaskedPromptSettings):
    spg_mode: str = "mix"  # A <= 0: eubo | mix (ω·EUBO + (1−ω)·ELBO) | elbo
    spg_beta: float = 1.5  # Rényi order of the EUBO (1.5 GSM8K/MATH/countdown-mix, 1.0 sudoku)
    spg_omega: float = 0.5
    spg_draws: int = 2  # n_t masks per inner step
    spg_block: int = 32  # b: block length of the block-random masking

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.spg_mode not in ("eubo", "mix", "elbo"):
            raise ConfigError(f"config key 'trainer.objective.spg_mode': expected eubo, mix or elbo, got {self.spg_mode!r}")
        for key, ok, expected in (("spg_beta", self.spg_beta > 0, "> 0"), ("spg_omega", 0 <= self.spg_omega <= 1, "in [0, 1]"),
                                  ("spg_draws", self.spg_draws >= 1, ">= 1"), ("spg_block", self.spg_block >= 1, ">= 1")):
            if not ok:
                raise ConfigError(f"config key 'trainer.objective.{key}': expected {expected}, got {getattr(self, key)}")


@dataclass
class SPGMask:
    drop: torch.Tensor  # prompt tokens masked
    masked: torch.Tensor  # answer positions masked
    scored: torch.Tensor  # masked positions whose log-probs enter the bound (M)
    n_valid: int  # answer length up to the first stop token


@register
class SPGObjective(AnswerTokenObjective):
    """SPG: the ELBO for positive advantages, an upper bound (EUBO, optionally mixed) for the rest."""

    name = "spg"
    Settings = SPGSettings
    paper_defaults = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=4, normalize_std=False,
                          leave_one_out=False)
    uses_ratio = False
    has_kl = False  # its paper uses none; SPG's code raises on β ≠ 0

    def draw(self, batch, hints, generator, inner_steps) -> list[list[list[SPGMask]]]:
        """Per inner step, per draw, per sample: its block-random mask."""
        out = []
        for _ in range(inner_steps):
            per_sample = sample_generators(batch, generator)
            out.append([[self._block_random(t, batch.stop, self.answer_mask(batch, hints, i), g)
                         for i, (t, g) in enumerate(zip(batch.trajectories, per_sample))]
                        for _ in range(self.s.spg_draws)])
        return out

    def _block_random(self, traj: Trajectory, stop, trained: torch.Tensor, generator) -> SPGMask:
        """SPG's block-random mask over the answer up to its stop token; `trained` (the answer mask
        without untrained pinned tokens) limits which masked positions are scored."""
        valid = loss_mask(traj, stop)
        n_valid = int(valid.sum())
        b = self.s.spg_block
        blocks = [c for c in range(math.ceil(traj.gen_length / b)) if valid[c * b:(c + 1) * b].any()]
        c = blocks[int(torch.randint(len(blocks), (1,), generator=generator))]
        position = torch.arange(traj.gen_length)
        masked = (position >= (c + 1) * b) | ~valid  # later blocks, and everything after the first stop
        in_c = ((position // b) == c) & valid
        m = int(in_c.sum())
        lo, hi = max(math.floor(m * 0.0), 1), min(math.floor(m * 1.0), m)
        n = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        chosen = in_c.nonzero().squeeze(1)[torch.randperm(m, generator=generator)[:n]]
        masked[chosen] = True
        clean = ~masked
        extra = torch.rand(traj.gen_length, generator=generator) < self.s.prompt_mask_prob
        masked |= clean & extra  # still-clean completion positions, masked with p as the prompt is
        drop = torch.rand(len(traj.prompt_ids), generator=generator) < self.s.prompt_mask_prob
        return SPGMask(drop, masked, masked & trained, n_valid)

    def canvases(self, batch, draws, i, inner):
        traj = batch.trajectories[i]
        final = torch.as_tensor(traj.final_tokens)
        return [(masked_prompt(traj, m.drop), final.masked_fill(m.masked, traj.mask_id))
                for m in (per_draw[i] for per_draw in draws[inner])]

    def sequence_score(self, batch, draws, i, inner, token_logps: list[torch.Tensor]) -> torch.Tensor:
        """S⁺ (A > 0) or S⁻ (A ≤ 0) of sample i from its n_t canvases' per-position log-probs."""
        scored = [per_draw[i].scored.to(token_logps[0].device) for per_draw in draws[inner]]
        n_valid = draws[inner][0][i].n_valid
        elbo = torch.stack([lp[m].sum() / m.sum().clamp(min=1) for lp, m in zip(token_logps, scored)]).mean()
        if batch.advantages[i] > 0 or self.s.spg_mode == "elbo":
            return elbo
        beta = self.s.spg_beta
        # P_k = mean_j[1(k∈M_j)·p(y_k|x̃_j)^β / t̂_j],  S⁻ = (1/β)·mean_{k: P_k > 0} log P_k
        terms = torch.stack([torch.where(m, torch.exp(beta * lp) / (m.sum().clamp(min=1) / n_valid),
                                         torch.zeros_like(lp)) for lp, m in zip(token_logps, scored)]).mean(0)
        seen = torch.stack(scored).any(0)
        eubo = torch.log(terms[seen]).mean() / beta if seen.any() else elbo * 0
        return eubo if self.s.spg_mode == "eubo" else self.s.spg_omega * eubo + (1 - self.s.spg_omega) * elbo

    def loss(self, policy, batch, prep, indices, total_units, inner=0):
        per_canvas, entropy = self.canvas_log_probs(policy, batch, prep.draws, indices, inner)
        terms = []
        for i in indices:
            length = self.sample_units(batch, prep.hints, i)
            score = self.sequence_score(batch, prep.draws, i, inner, per_canvas[i])
            terms.append(-batch.advantages[i].to(score.device) * score * length)
        loss = torch.stack(terms).sum() / total_units
        mask_entropy = [entropy[i][self.answer_mask(batch, prep.hints, i)] for i in indices]
        return loss, LossStats(units=float(sum(self.sample_units(batch, prep.hints, i) for i in indices)),
                               entropy_sum=float(torch.cat(mask_entropy).sum()))


@dataclass
class WD1Draws(PromptMasks):
    weights: torch.Tensor | None = None  # (N,) w⁺ − w⁻ per sample: softmax(A) − softmax(−A) within its group


@register
class WD1Objective(MeanFieldObjective):
    """wd1: weighted likelihood, positive weights softmax(A) and negative softmax(−A) per group."""

    name = "wd1"
    Settings = MaskedPromptSettings
    paper_defaults = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=12, normalize_std=False,
                          leave_one_out=False)
    uses_ratio = False
    has_kl = False

    def draw(self, batch, hints, generator, inner_steps) -> WD1Draws:
        masks = super().draw(batch, hints, generator, inner_steps)  # d1's one-step canvases
        weights = torch.zeros(len(batch.trajectories))
        for members in groups_of(batch).values():
            adv = batch.advantages[members].float()
            weights[members] = adv.softmax(0) - (-adv).softmax(0)
        return WD1Draws(masks.prompt, weights)

    def units(self, batch, prep):
        return len(groups_of(batch))

    def steps_without_signal(self, batch):
        return False  # its unit is a group it trains (d1's batch normalisation is mean_field's)

    def loss(self, policy, batch, prep, indices, total_units, inner=0):
        logps, entropy = self.unit_log_probs(policy, batch, prep, indices, inner)
        weights = prep.draws.weights[indices].to(logps[0].device)
        sequence = torch.stack([lp.sum() for lp in logps])  # ℓ_i = Σ_k m_k ℓ(k|x̃): a sum, not a mean
        loss = -(weights * sequence).sum() / total_units
        return loss, LossStats(units=float(sum(len(lp) for lp in logps)), entropy_sum=float(torch.cat(entropy).sum()))


def groups_of(batch) -> dict[int, list[int]]:
    """{prompt index: the batch positions of its samples}."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(batch.trajectories):
        groups.setdefault(t.prompt_index, []).append(i)
    return groups
