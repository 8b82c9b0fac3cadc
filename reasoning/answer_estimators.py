"""The answer-token estimators: they score the final answer's tokens from masked canvases
(untempered), as their papers do — d1's mean_field, DiffuCoder's coupled, SPG and wd1. See the
docstring of reasoning/objectives.py for each one's definition and defaults."""

from __future__ import annotations

import math

import torch

from reasoning.objective_base import Objective, loss_mask, sample_generators
from rollouts import Trajectory
from rollouts.sampler import left_pad


class _AnswerTokenObjective(Objective):
    """Scores the loss-mask tokens of the final answer from masked canvases, untempered."""

    def random_per_inner_step(self):
        return True

    def canvases(self, batch, i: int, inner: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(prompt_ids, answer_canvas)] for sample i at inner step `inner`."""
        raise NotImplementedError

    def combine(self, batch, i: int, inner: int, token_logps: list[torch.Tensor]) -> torch.Tensor:
        """Per-position log-probs (L,) from those of each canvas (default: the one canvas)."""
        return token_logps[0]

    def canvas_log_probs(self, policy, batch, indices, inner) -> tuple[dict, dict]:
        """{i: [(L,) log-prob of the final token at every position, per canvas]}, {i: entropy (L,) of canvas 0}."""
        rows, owners = [], []
        for i in indices:
            for prompt, answer in self.canvases(batch, i, inner):
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

    def unit_log_probs(self, policy, batch, indices, inner):
        per_canvas, entropy = self.canvas_log_probs(policy, batch, indices, inner)
        logps, entropies = [], []
        for i in indices:
            mask = self.answer_mask(batch, i).to(per_canvas[i][0].device)
            logps.append(self.combine(batch, i, inner, per_canvas[i])[mask])
            entropies.append(entropy[i][mask])
        return logps, entropies


def _masked_prompt(trajectory: Trajectory, drop: torch.Tensor) -> torch.Tensor:
    return torch.tensor(trajectory.prompt_ids).masked_fill(drop, trajectory.mask_id)


class MeanFieldObjective(_AnswerTokenObjective):
    """d1's diffu-GRPO one-step estimate."""

    name = "mean_field"

    def draw(self, batch, generator, inner_steps):
        self.prompt_masks = []
        for _ in range(inner_steps):
            per_sample = sample_generators(batch, generator)
            self.prompt_masks.append([torch.rand(len(t.prompt_ids), generator=g) < self.s.prompt_mask_prob
                                      for t, g in zip(batch.trajectories, per_sample)])

    def canvases(self, batch, i, inner):
        traj = batch.trajectories[i]
        return [(_masked_prompt(traj, self.prompt_masks[inner][i]), torch.full((traj.gen_length,), traj.mask_id))]


class CoupledObjective(_AnswerTokenObjective):
    """DiffuCoder's coupled-GRPO: full-mask pass plus a complementary pair, 1/t-weighted."""

    name = "coupled"

    def draw(self, batch, generator, inner_steps):
        lo, hi = self.s.coupled_t
        self.t, self.u = [], []
        for _ in range(inner_steps):  # one t for the whole batch (all ranks draw the same), u per sample
            self.t.append(lo + (hi - lo) * float(torch.rand(1, generator=generator)))
            per_sample = sample_generators(batch, generator)
            self.u.append([torch.rand(t.gen_length, generator=g) for t, g in zip(batch.trajectories, per_sample)])

    def canvases(self, batch, i, inner):
        traj = batch.trajectories[i]
        final, prompt = torch.as_tensor(traj.final_tokens), torch.tensor(traj.prompt_ids)
        in_a = self.u[inner][i] < self.t[inner]
        return [(prompt, torch.full_like(final, traj.mask_id)),
                (prompt, final.masked_fill(in_a, traj.mask_id)),
                (prompt, final.masked_fill(~in_a, traj.mask_id))]

    def combine(self, batch, i, inner, token_logps):
        full, on_a, on_b = token_logps
        t = self.t[inner]
        in_a = (self.u[inner][i] < t).to(full.device)
        return 0.5 * (full + torch.where(in_a, on_a / t, on_b / (1 - t)))


# --- ratio-free estimators ---------------------------------------------------------------------

class SPGObjective(_AnswerTokenObjective):
    """SPG: the ELBO for positive advantages, an upper bound (EUBO, optionally mixed) for the rest."""

    name = "spg"
    uses_ratio = False

    def draw(self, batch, generator, inner_steps):
        """Per inner step and draw: (prompt drop mask, answer mask, scored positions M) per sample."""
        self.masks = []
        for _ in range(inner_steps):
            per_sample = sample_generators(batch, generator)
            self.masks.append([[self._block_random(t, batch.stop, self.answer_mask(batch, i), g)
                                for i, (t, g) in enumerate(zip(batch.trajectories, per_sample))]
                               for _ in range(self.s.spg_draws)])

    def _block_random(self, traj: Trajectory, stop, trained: torch.Tensor, generator):
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
        scored = masked & trained
        return drop, masked, scored, n_valid

    def canvases(self, batch, i, inner):
        traj = batch.trajectories[i]
        final = torch.as_tensor(traj.final_tokens)
        return [(_masked_prompt(traj, drop), final.masked_fill(masked, traj.mask_id))
                for drop, masked, _, _ in (draws[i] for draws in self.masks[inner])]

    def sequence_score(self, batch, i, inner, token_logps: list[torch.Tensor]) -> torch.Tensor:
        """S⁺ (A > 0) or S⁻ (A ≤ 0) of sample i from its n_t canvases' per-position log-probs."""
        scored = [draws[i][2].to(token_logps[0].device) for draws in self.masks[inner]]
        n_valid = self.masks[inner][0][i][3]
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

    def loss(self, policy, batch, indices, total_units, inner=0):
        per_canvas, entropy = self.canvas_log_probs(policy, batch, indices, inner)
        terms = []
        for i in indices:
            length = self.sample_units(batch, i)
            score = self.sequence_score(batch, i, inner, per_canvas[i])
            terms.append(-batch.advantages[i].to(score.device) * score * length)
        loss = torch.stack(terms).sum() / total_units
        mask_entropy = [entropy[i][self.answer_mask(batch, i)] for i in indices]
        return loss, {"units": float(sum(self.sample_units(batch, i) for i in indices)),
                      "ratio_sum": 0.0, "ratio_max_abs_dev": 0.0, "clip_low": 0.0, "clip_high": 0.0,
                      "entropy_sum": float(torch.cat(mask_entropy).sum())}


class WD1Objective(MeanFieldObjective):
    """wd1: weighted likelihood, positive weights softmax(A) and negative softmax(−A) per group."""

    name = "wd1"
    uses_ratio = False

    def draw(self, batch, generator, inner_steps):
        super().draw(batch, generator, inner_steps)  # d1's one-step canvases
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(batch.trajectories):
            groups.setdefault(t.prompt_index, []).append(i)
        self.weights = torch.zeros(len(batch.trajectories))  # w⁺ − w⁻ per sample
        for members in groups.values():
            adv = batch.advantages[members].float()
            self.weights[members] = adv.softmax(0) - (-adv).softmax(0)
        self.groups = groups

    def units(self, batch):
        return len({t.prompt_index for t in batch.trajectories})

    def loss(self, policy, batch, indices, total_units, inner=0):
        logps, entropy = self.unit_log_probs(policy, batch, indices, inner)
        weights = self.weights[indices].to(logps[0].device)
        sequence = torch.stack([lp.sum() for lp in logps])  # ℓ_i = Σ_k m_k ℓ(k|x̃): a sum, not a mean
        loss = -(weights * sequence).sum() / total_units
        return loss, {"units": float(sum(len(lp) for lp in logps)), "ratio_sum": 0.0, "ratio_max_abs_dev": 0.0,
                      "clip_low": 0.0, "clip_high": 0.0, "entropy_sum": float(torch.cat(entropy).sum())}
