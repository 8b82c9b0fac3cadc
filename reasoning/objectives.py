"""Policy-gradient objectives: how an update turns sampled answers into a loss.

Five estimators share one interface (and the trainer, rollouts, advantages, PPO clip and KL
code), so `trainer.objective` swaps them on one harness. Each is its paper's estimator, as
stated below from its paper's reference code; where ours differs it says so.

  trajectory  (ours) the exact visited path: each committed token's log-prob at the state it
              was committed from, at the rollout temperature (the behaviour log-probs, so the
              first ratio is exactly 1 with merge_steps 1), plus — when the position choice was
              a learned Plackett–Luce draw (selection_temperature > 0, not `random`) — that
              commit's pick factor. One unit per committed token. merge_steps > 1 is TraceRL's
              shrink approximation (arXiv 2509.06949 §3): several steps scored from one canvas.
              Rollouts at T = 0 train only the pick factors (the tokens were never sampled).
  mean_field  d1's diffu-GRPO (arXiv 2504.12216, Alg. 1 / Eq. 3; dllm-reasoning/d1): one
              forward with the whole completion masked and each prompt token masked with
              p = 0.15; a fresh mask for each inner step j, the same mask for θ, θ_old and the
              reference at that j. Untempered log-softmax. A = r − mean (no std), ε = 0.5,
              β = 0.04, μ = 12.
  coupled     DiffuCoder's coupled-GRPO (arXiv 2506.20639 §4; apple/ml-diffucoder): per inner
              step one t ~ U(0.2, 0.8) for the batch and u_k ~ U(0, 1) per token; three
              forwards — completion fully masked (x⁰), masked where u < t (xᴬ), masked where
              u > t (xᴮ); ℓ_k = ½[ℓ(k|x⁰) + (k∈A ? ℓ(k|xᴬ)/t : ℓ(k|xᴮ)/(1−t))]. Prompt never
              masked. Leave-one-out A, no std, ε = 0.5, β = 0.01, μ = 2.
  spg         SPG (arXiv 2510.09541; facebookresearch/SPG): no ratio; per inner step n_t = 2
              block-random masks; S⁺ = ELBO for A > 0, S⁻ = EUBO (Rényi, β) mixed with the ELBO
              (ω = 0.5) for A ≤ 0; L = Σ_i −A_i·S_i·|y_i| / Σ_i |y_i|. A = r − mean, μ = 4.
  wd1         wd1 (arXiv 2507.08838; xiaohangt/wd1): ratio-free weighted likelihood; d1's
              one-step estimate summed over the completion, ℓ_i = Σ_k m_k ℓ(k|x̃);
              L = −Σ_i softmax(A)_i ℓ_i + Σ_i softmax(−A)_i ℓ_i within each group. μ = 12.

Shared rules (one for all, documented):
  - Loss mask: the completion up to and including its first stop token (EOS / end of turn),
    without pinned tokens (hints are not the policy's actions; `rollout.hints.train_hints: entropy`
    adds back each hinted answer's highest-entropy hint tokens, scored from the fully masked canvas
    as IGPO's code does — objective_base.py `answer_mask`).
  - Normalisation (DAPO-style, global): the loss is a sum over units divided by the number of
    units in the whole update — all micro-batches and all ranks — so splitting a batch over
    micro-batches or processes never changes the gradient. Units are tokens (committed tokens
    for trajectory, loss-mask tokens for the others, Σ|y_i| for SPG), except wd1, whose paper
    sums within a group and averages groups: its unit is a group.
  - PPO clip (trajectory, mean_field, coupled): min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) per unit;
    KL: β·k3(ref‖θ) per unit against the model with its LoRA adapter disabled.
  - Stale samples (rollout.async, trajectory only): decoupled PPO (AReaL, arXiv 2505.24298):
    the clip around π_prox (θ at the update's start), each unit weighted by the detached
    w = π_prox/π_behav, units with w > importance_cap masked (reasoning/objective_base.py).
The shared parts live in reasoning/objective_base.py, the answer-token estimators in
reasoning/answer_estimators.py.
Differences from the reference code, on purpose: d1/wd1/SPG/DiffuCoder compute the inner-step
masks from a global seed; ours come from the trainer's per-step generator (same distribution,
resume-exact). Their trainers normalise per micro-batch; ours globally (above).
"""

from __future__ import annotations

import torch

from reasoning.answer_estimators import CoupledObjective, MeanFieldObjective, SPGObjective, WD1Objective
from reasoning.objective_base import Objective, ObjectiveSettings, RolloutBatch, k3, loss_mask, sample_generators
from rollouts import DecodingConfig, replay

__all__ = ["OBJECTIVES", "PAPER_DEFAULTS", "Objective", "ObjectiveSettings", "RolloutBatch", "build_objective", "k3",
           "loss_mask", "sample_generators", "TrajectoryObjective", "MeanFieldObjective", "CoupledObjective",
           "SPGObjective", "WD1Objective"]

# The papers' defaults, used where the config leaves a trainer key unset (null).
PAPER_DEFAULTS: dict[str, dict] = {
    "trajectory": dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=1, normalize_std=True,
                       leave_one_out=False),
    "mean_field": dict(clip_eps_low=0.5, clip_eps_high=0.5, kl_coef=0.04, inner_steps=12, normalize_std=False,
                       leave_one_out=False),
    "coupled": dict(clip_eps_low=0.5, clip_eps_high=0.5, kl_coef=0.01, inner_steps=2, normalize_std=False,
                    leave_one_out=True),
    "spg": dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=4, normalize_std=False,
                leave_one_out=False),
    "wd1": dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=12, normalize_std=False,
                leave_one_out=False),
}



# --- trajectory: the exact visited path ------------------------------------------------------------

class TrajectoryObjective(Objective):
    name = "trajectory"

    @staticmethod
    def learned_selection(cfg: DecodingConfig) -> bool:
        """The position choice is a draw whose probability depends on θ (not uniform `random`)."""
        return cfg.selection_temperature > 0 and cfg.commit != "random"

    @staticmethod
    def trains_tokens(cfg: DecodingConfig) -> bool:
        """At T = 0 the committed tokens were the argmax, never sampled: nothing to train there."""
        return cfg.temperature > 0

    def sample_units(self, batch, i):
        keep = self.hint_keep.get(i)
        return int(batch.trajectories[i].commits.sum()) + (int(keep.sum()) if keep is not None else 0)

    def _combine(self, cfg: DecodingConfig, tokens: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(tokens)
        if self.trains_tokens(cfg):
            out = out + tokens
        if self.learned_selection(cfg):
            out = out + picks
        return out

    def off_policy(self, batch):
        """Stale samples, and samples drawn through an approximate KV cache (decoding.cache): their
        recorded log-probs are the cached forwards', while the replay attends to the full canvas."""
        stale = set(batch.stale())
        return [i for i, t in enumerate(batch.trajectories) if i in stale or t.cache != "none"]

    def recorded_log_probs(self, batch):
        """Per sample: its commits' behaviour log-probs, then (train_hints: entropy) its trained hint
        tokens' θ_old log-probs — hints were never sampled, θ_old is their behaviour."""
        return [torch.cat([self._combine(batch.decoding, torch.tensor(t.event_logp[t.commits]),
                                         torch.tensor(t.event_selection_logp[t.commits])),
                           self.hint_old.get(i, torch.zeros(0))]) for i, t in enumerate(batch.trajectories)]

    def behaviour_log_probs(self, batch):
        if self.s.merge_steps != 1:
            return None  # merged windows are scored from other canvases: old = replay with the same merge
        return self.recorded_log_probs(batch)

    def unit_log_probs(self, policy, batch, indices, inner):
        trajectories = [batch.trajectories[i] for i in indices]
        out = replay(policy, trajectories, batch.decoding, merge_steps=self.s.merge_steps,
                     micro_batch=self.s.replay_batch)
        logps = [self._combine(batch.decoding, tok, pick) for tok, pick in zip(out.token_logp, out.pick_logp)]
        if not self.hint_keep:
            return logps, out.token_entropy
        hint_logps, hint_entropy = self.hint_log_probs(policy, batch, indices)
        return ([torch.cat([lp, h.to(lp.device)]) for lp, h in zip(logps, hint_logps)],
                [torch.cat([e, h.to(e.device)]) for e, h in zip(out.token_entropy, hint_entropy)])


OBJECTIVES = {cls.name: cls for cls in (TrajectoryObjective, MeanFieldObjective, CoupledObjective, SPGObjective,
                                        WD1Objective)}


def build_objective(name: str, settings: ObjectiveSettings) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"config key 'trainer.objective': unknown objective '{name}' "
                         f"(expected one of {', '.join(OBJECTIVES)})")
    if name in ("spg", "wd1") and settings.kl_coef > 0:
        raise ValueError(f"config key 'trainer.kl_coef': objective '{name}' has no KL term (its paper "
                         f"uses none; SPG's code raises on β ≠ 0); set it to 0")
    return OBJECTIVES[name](settings)
