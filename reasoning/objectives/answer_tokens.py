"""The answer-token estimators with a PPO ratio: d1's mean_field and DiffuCoder's coupled. They
score the final answer's tokens from masked canvases, untempered, as their papers do
(docs/estimators.md); the ratio-free ones (SPG, wd1) are in objectives/ratio_free.py.

  mean_field  d1's diffu-GRPO (arXiv 2504.12216, Alg. 1 / Eq. 3; dllm-reasoning/d1): one forward with
              the whole completion masked and each prompt token masked with p = 0.15; a fresh mask
              for each inner step j, the same for θ, θ_old and the reference at that j.
  coupled     DiffuCoder's coupled-GRPO (arXiv 2506.20639 §4; apple/ml-diffucoder): per inner step
              one t ~ U(0.2, 0.8) for the batch and u_k ~ U(0, 1) per token; three forwards —
              completion fully masked (x⁰), masked where u < t (xᴬ), masked where u > t (xᴮ);
              ℓ_k = ½[ℓ(k|x⁰) + (k∈A ? ℓ(k|xᴬ)/t : ℓ(k|xᴮ)/(1−t))]. Prompt never masked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from reasoning.objectives.base import Objective, ObjectiveSettings, loss_mask, pinned_mask, register, sample_generators
from reasoning.schema import ConfigError
from rollouts import Trajectory
from rollouts.decoding import left_pad


@dataclass
class MaskedPromptSettings(ObjectiveSettings):
    prompt_mask_prob: float = 0.15  # d1's prompt masking (mean_field, wd1, spg)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.prompt_mask_prob < 1:
            raise ConfigError(f"config key 'trainer.objective.prompt_mask_prob': expected in [0, 1), "
                              f"got {self.prompt_mask_prob}")


class AnswerTokenObjective(Objective):
    """Scores the loss-mask tokens of the final answer from masked canvases, untempered."""

    def random_per_inner_step(self):
        return True

    def canvases(self, batch, draws, i: int, inner: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(prompt_ids, answer_canvas)] for sample i at inner step `inner`."""
        raise NotImplementedError

    def combine(self, batch, draws, i: int, inner: int, token_logps: list[torch.Tensor]) -> torch.Tensor:
        """Per-position log-probs (L,) from those of each canvas (default: the one canvas)."""
        return token_logps[0]

    def canvas_log_probs(self, policy, batch, draws, indices, inner) -> tuple[dict, dict]:
        """{i: [(L,) log-prob of the final token at every position, per canvas]}, {i: entropy (L,) of canvas 0}."""
        rows, owners = [], []
        for i in indices:
            for prompt, answer in self.canvases(batch, draws, i, inner):
                rows.append((prompt, answer))
                owners.append(i)
        prompt_ids, prompt_mask = left_pad([r[0].tolist() for r in rows], policy.ids.pad)
        answers = torch.stack([r[1] for r in rows])
        device = policy.device
        logp = policy.step_log_probs(prompt_ids.to(device), prompt_mask.to(device), answers.to(device), 1.0)
        per_canvas: dict[int, list[torch.Tensor]] = {i: [] for i in indices}
        entropy: dict[int, torch.Tensor] = {}
        for row, i in enumerate(owners):
            final = torch.as_tensor(batch.trajectories[i].final_tokens, device=device)
            per_canvas[i].append(logp[row].gather(-1, final.unsqueeze(-1)).squeeze(-1))
            if i not in entropy:
                at = logp[row].detach()
                entropy[i] = -(at.exp() * at).sum(-1)
        return per_canvas, entropy

    def unit_log_probs(self, policy, batch, prep, indices, inner):
        per_canvas, entropy = self.canvas_log_probs(policy, batch, prep.draws, indices, inner)
        logps, entropies = [], []
        for i in indices:
            mask = self.answer_mask(batch, prep.hints, i).to(per_canvas[i][0].device)
            logps.append(self.combine(batch, prep.draws, i, inner, per_canvas[i])[mask])
            entropies.append(entropy[i][mask])
        return logps, entropies


def masked_prompt(trajectory: Trajectory, drop: torch.Tensor) -> torch.Tensor:
    return torch.tensor(trajectory.prompt_ids).masked_fill(drop, trajectory.mask_id)


@dataclass
class PromptMasks:
    """mean_field / wd1: per inner step, per sample, the prompt tokens masked in its one-step canvas."""

    prompt: list[list[torch.Tensor]]


@dataclass
class MeanFieldSettings(MaskedPromptSettings):
    # batch: d1's DiffuGRPOTrainer — the loss is a mean over every answer token of the step's batch,
    # the groups without reward variance included (their advantage is 0), and the μ optimizer steps
    # are taken even when no group is informative; informative: a mean over the trained groups' tokens
    # only, and no step without one (dlmrl's rule for every other objective)
    normalize: Literal["batch", "informative"] = "batch"


@register
class MeanFieldObjective(AnswerTokenObjective):
    """d1's diffu-GRPO one-step estimate."""

    name = "mean_field"
    Settings = MeanFieldSettings
    paper_defaults = dict(clip_eps_low=0.5, clip_eps_high=0.5, kl_coef=0.04, inner_steps=12, normalize_std=False,
                          leave_one_out=False)

    def units(self, batch, prep):
        trained = super().units(batch, prep) if batch.trajectories else 0
        if self.s.normalize != "batch":
            return trained
        return trained + sum(int((loss_mask(t, batch.stop) & ~pinned_mask(t)).sum()) for t in batch.uninformative)

    def steps_without_signal(self, batch):
        return self.s.normalize == "batch" and bool(batch.uninformative)

    def draw(self, batch, hints, generator, inner_steps) -> PromptMasks:
        masks = []
        for _ in range(inner_steps):
            per_sample = sample_generators(batch, generator)
            masks.append([torch.rand(len(t.prompt_ids), generator=g) < self.s.prompt_mask_prob
                          for t, g in zip(batch.trajectories, per_sample)])
        return PromptMasks(masks)

    def canvases(self, batch, draws: PromptMasks, i, inner):
        traj = batch.trajectories[i]
        return [(masked_prompt(traj, draws.prompt[inner][i]), torch.full((traj.gen_length,), traj.mask_id))]


@dataclass
class CoupledSettings(ObjectiveSettings):
    coupled_t: tuple[float, float] = (0.2, 0.8)  # t ~ U(lo, hi)


@dataclass
class CoupledDraws:
    t: list[float]  # per inner step: the masking level, one for the whole batch (all ranks draw the same)
    u: list[list[torch.Tensor]]  # per inner step, per sample: u_k ~ U(0, 1) per answer position


@register
class CoupledObjective(AnswerTokenObjective):
    """DiffuCoder's coupled-GRPO: full-mask pass plus a complementary pair, 1/t-weighted."""

    name = "coupled"
    Settings = CoupledSettings
    paper_defaults = dict(clip_eps_low=0.5, clip_eps_high=0.5, kl_coef=0.01, inner_steps=2, normalize_std=False,
                          leave_one_out=True)

    def draw(self, batch, hints, generator, inner_steps) -> CoupledDraws:
        lo, hi = self.s.coupled_t
        draws = CoupledDraws([], [])
        for _ in range(inner_steps):
            draws.t.append(lo + (hi - lo) * float(torch.rand(1, generator=generator)))
            per_sample = sample_generators(batch, generator)
            draws.u.append([torch.rand(t.gen_length, generator=g) for t, g in zip(batch.trajectories, per_sample)])
        return draws

    def canvases(self, batch, draws: CoupledDraws, i, inner):
        traj = batch.trajectories[i]
        final, prompt = torch.as_tensor(traj.final_tokens), torch.tensor(traj.prompt_ids)
        in_a = draws.u[inner][i] < draws.t[inner]
        return [(prompt, torch.full_like(final, traj.mask_id)),
                (prompt, final.masked_fill(in_a, traj.mask_id)),
                (prompt, final.masked_fill(~in_a, traj.mask_id))]

    def combine(self, batch, draws: CoupledDraws, i, inner, token_logps):
        full, on_a, on_b = token_logps
        t = draws.t[inner]
        in_a = (draws.u[inner][i] < t).to(full.device)
        return 0.5 * (full + torch.where(in_a, on_a / t, on_b / (1 - t)))
