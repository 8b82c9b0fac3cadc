"""The sequence-level ELBO objectives of 2026: GDPO, ESPO and BGPO (docs/estimators.md).

Each scores the final answer as one sequence, through a Monte-Carlo ELBO on masked copies of it
(prompt never masked, untempered log-softmax), and has one loss unit per answer (BGPO: one per
draw). As their reference code computes them:

  gdpo  GDPO (arXiv 2510.08554; NeMo-RL's port by a co-author): a semi-deterministic ELBO on
        Gauss–Legendre nodes t_n (3: 0.1127 / 0.5 / 0.8873, weights 5/18, 8/18, 5/18), one mask per
        node with exactly clamp(⌊t_n|y|⌋, 1, |y|) of the |y| answer tokens masked, seeded by a hash of
        the row's tokens; ELBO = Σ_n (w_n/t_n) Σ_masked ℓ. GSPO-shaped ratio exp(ΔELBO/|y|), clip
        (0.5, 1.5), mean over answers, A = r − mean, no KL.
  espo  ESPO (arXiv 2512.03759; ML-GSAI/ESPO): per inner step, draw and prompt one k ~ U{0..L}; answer r
        of the prompt's b masks n_r = round(k + r(L+1)/b) mod (L+1) of its L positions (stratified
        across the group's rows, pads included), p_r = n_r/(L+1), and its complement is scored too:
        ELBO = ½[Σ_{k∈M} ℓ_k(x̃)/p + Σ_{k∉M} ℓ_k(x̃ᶜ)/(L/(L+1) − p)], averaged over `espo_draws`
        draws. Ratio exp(ΔELBO/L), PPO clip 0.2, leave-one-out A, k2 KL β·½(ELBO_θ − ELBO_ref)²/L.
  bgpo  BGPO (arXiv 2510.11683 Eq. 13; DARE's port): n_t draws per answer with stratified counts
        n_j = ((round(k + jL_y/n_t) − 1) mod L_y) + 1, k ~ U{1..L_y}, drawn once per update;
        l_j = Σ_masked ℓ / p_j / L. With d_j = l_j^θ − l_j^old the ratio is linear, 1 + d_j, for
        A ≥ 0 (a lower bound there) and e^{d_j} for A < 0, then the PPO clip (0.2) with dual clip 3;
        each draw a unit (so /n_t), A = (r − mean)/std, no KL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reasoning.objectives.answer_tokens import AnswerTokenObjective
from reasoning.objectives.base import LossStats, ObjectiveSettings, loss_mask, register, sample_generators
from reasoning.objectives.ratio_free import groups_of
from reasoning.schema import ConfigError
from rollouts.seeding import derive_seed

GAUSS_LEGENDRE = {  # nodes and weights on [0, 1]
    1: ([0.5], [1.0]),
    2: ([0.5 - 0.5 / math.sqrt(3), 0.5 + 0.5 / math.sqrt(3)], [0.5, 0.5]),
    3: ([0.5 - 0.5 * math.sqrt(0.6), 0.5, 0.5 + 0.5 * math.sqrt(0.6)], [5 / 18, 8 / 18, 5 / 18]),
}


class SequenceObjective(AnswerTokenObjective):
    """One loss unit per answer: its ELBO over the answer's scale (`unit_log_probs` returns one value each)."""

    def sample_units(self, batch, hints, i):
        return 1

    def masks(self, draws, i: int, inner: int) -> list[torch.Tensor]:
        """(L,) bool per canvas of sample i at inner step `inner`: the answer positions masked."""
        raise NotImplementedError

    def canvases(self, batch, draws, i, inner):
        traj = batch.trajectories[i]
        final, prompt = torch.as_tensor(traj.final_tokens), torch.tensor(traj.prompt_ids)
        return [(prompt, final.masked_fill(m, traj.mask_id)) for m in self.masks(draws, i, inner)]

    def elbo(self, batch, draws, i: int, inner: int, token_logps: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def scale(self, batch, draws, i: int) -> float:
        """What the ELBO is divided by to make the unit (the ratio's exponent)."""
        return float(batch.trajectories[i].gen_length)

    def unit_log_probs(self, policy, batch, prep, indices, inner):
        per_canvas, entropy = self.canvas_log_probs(policy, batch, prep.draws, indices, inner)
        units, entropies = [], []
        for i in indices:
            value = self.elbo(batch, prep.draws, i, inner, per_canvas[i]) / self.scale(batch, prep.draws, i)
            units.append(value.reshape(1))
            entropies.append(masked_entropy(entropy[i], self.masks(prep.draws, i, inner)[0]).reshape(1))
        return units, entropies


def masked_entropy(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy over the positions the first canvas masked (0 when it masks none)."""
    mask = mask.to(entropy.device)
    return entropy[mask].mean() if mask.any() else entropy[0] * 0


def stratified_counts(k: int, size: int, draws: int) -> list[int]:
    """BGPO's (and DARE's VRPO's) mask counts: n_j = ((round(k + j·size/draws) − 1) mod size) + 1 for
    j < draws and a random k in 1..size, so the draws spread over every masking level."""
    return [(int(round(k + j * size / draws)) - 1) % size + 1 for j in range(draws)]


# --- GDPO ------------------------------------------------------------------------------------------

@dataclass
class GDPOSettings(ObjectiveSettings):
    gdpo_nodes: int = 3  # Gauss–Legendre nodes of the semi-deterministic ELBO (the recipe's gauss-3)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gdpo_nodes not in GAUSS_LEGENDRE:
            raise ConfigError(f"config key 'trainer.objective.gdpo_nodes': expected one of {sorted(GAUSS_LEGENDRE)}, "
                             f"got {self.gdpo_nodes}")


@dataclass
class GDPODraws:
    masks: list[list[torch.Tensor]]  # per sample, per node: the answer positions masked
    tokens: list[int]  # per sample: |y|, its answer tokens (the unit's scale)


def content_seed(prompt_ids, tokens) -> int:
    """GDPO's row hash, Σ_k id_k·k mod (2³¹ − 1): the same masks for θ, θ_old and any micro-batching."""
    ids = list(prompt_ids) + [int(t) for t in tokens]
    return sum(token * k for k, token in enumerate(ids)) % (2 ** 31 - 1)


@register
class GDPOObjective(SequenceObjective):
    """GDPO: a Gauss–Legendre ELBO per answer and a GSPO-shaped sequence ratio."""

    name = "gdpo"
    Settings = GDPOSettings
    paper_defaults = dict(clip_eps_low=0.5, clip_eps_high=0.5, kl_coef=0.0, inner_steps=1, normalize_std=False,
                          leave_one_out=False)
    has_kl = False  # the port rejects a KL term

    def random_per_inner_step(self):
        return False  # one mask per node, fixed by the row's content

    def draw(self, batch, hints, generator, inner_steps) -> GDPODraws:
        nodes, _ = GAUSS_LEGENDRE[self.s.gdpo_nodes]
        masks, tokens = [], []
        for i, traj in enumerate(batch.trajectories):
            answer = self.answer_mask(batch, hints, i).nonzero().squeeze(1)
            size = max(len(answer), 1)
            rng = torch.Generator().manual_seed(content_seed(traj.prompt_ids, traj.final_tokens))
            per_node = []
            for t in nodes:
                count = min(max(int(math.floor(t * size)), 1), size)
                chosen = answer[torch.randperm(len(answer), generator=rng)[:count]]
                mask = torch.zeros(traj.gen_length, dtype=torch.bool)
                mask[chosen] = True
                per_node.append(mask)
            masks.append(per_node)
            tokens.append(size)
        return GDPODraws(masks, tokens)

    def masks(self, draws: GDPODraws, i, inner):
        return draws.masks[i]

    def elbo(self, batch, draws: GDPODraws, i, inner, token_logps):
        nodes, weights = GAUSS_LEGENDRE[self.s.gdpo_nodes]
        terms = [w / t * lp[m.to(lp.device)].sum() for t, w, lp, m in zip(nodes, weights, token_logps, draws.masks[i])]
        return torch.stack(terms).sum()

    def scale(self, batch, draws: GDPODraws, i):
        return float(draws.tokens[i])


# --- ESPO ------------------------------------------------------------------------------------------

@dataclass
class ESPOSettings(ObjectiveSettings):
    espo_draws: int = 2  # num_mc: coupled mask pairs per ELBO (2 forwards each)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.espo_draws < 1:
            raise ConfigError(f"config key 'trainer.objective.espo_draws': expected >= 1, got {self.espo_draws}")


@dataclass
class ESPODraws:
    masks: list[list[list[torch.Tensor]]]  # per inner step, per draw, per sample: positions masked in x̃
    fractions: list[list[list[float]]]  # the same: p = n / (L + 1)


@register
class ESPOObjective(SequenceObjective):
    """ESPO: a coupled (complementary-mask) ELBO with counts stratified across the batch's answers."""

    name = "espo"
    Settings = ESPOSettings
    paper_defaults = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=1e-3, inner_steps=8, normalize_std=False,
                          leave_one_out=True)

    def draw(self, batch, hints, generator, inner_steps) -> ESPODraws:
        """Counts stratified within each prompt's group (ESPO stratifies within a micro-batch): one k per
        group and draw, seeded by the prompt, so ranks and micro-batches never change the masks."""
        groups = groups_of(batch)
        draws = ESPODraws([], [])
        for _ in range(inner_steps):
            step_masks, step_fractions = [], []
            for _ in range(self.s.espo_draws):
                base = int(torch.randint(2 ** 62, (1,), generator=generator))
                per_sample = sample_generators(batch, generator)
                masks, fractions = [None] * len(batch.trajectories), [0.0] * len(batch.trajectories)
                for prompt, members in groups.items():
                    members = sorted(members, key=lambda i: batch.trajectories[i].sample_index)
                    L = batch.trajectories[members[0]].gen_length
                    k = int(torch.randint(0, L + 1, (1,), generator=torch.Generator().manual_seed(
                        derive_seed(base, prompt, 1 << 30))))
                    for r, i in enumerate(members):
                        n = int(round(k + r * (L + 1) / len(members))) % (L + 1)
                        mask = torch.zeros(L, dtype=torch.bool)
                        mask[torch.randperm(L, generator=per_sample[i])[:n]] = True
                        masks[i], fractions[i] = mask, n / (L + 1)
                step_masks.append(masks)
                step_fractions.append(fractions)
            draws.masks.append(step_masks)
            draws.fractions.append(step_fractions)
        return draws

    def masks(self, draws: ESPODraws, i, inner):
        return [m for per_draw in draws.masks[inner] for m in (per_draw[i], ~per_draw[i])]

    def elbo(self, batch, draws: ESPODraws, i, inner, token_logps):
        L = batch.trajectories[i].gen_length
        values = []
        for d, per_draw in enumerate(draws.masks[inner]):
            mask, p = per_draw[i].to(token_logps[0].device), draws.fractions[inner][d][i]
            on, off = token_logps[2 * d], token_logps[2 * d + 1]
            value = on[mask].sum() / p if mask.any() else on.sum() * 0
            if (~mask).any():
                value = value + off[~mask].sum() / (L / (L + 1) - p)
            values.append(0.5 * value)
        return torch.stack(values).mean()

    def kl_units(self, ref: torch.Tensor, logp: torch.Tensor, batch, indices) -> torch.Tensor:
        """ESPO's k2 on the raw ELBO gap, β·½(ELBO_θ − ELBO_ref)²/L, written on the units ELBO/L."""
        scale = torch.tensor([float(batch.trajectories[i].gen_length) for i in indices], device=logp.device)
        return 0.5 * scale * (logp - ref) ** 2


# --- BGPO ------------------------------------------------------------------------------------------

@dataclass
class BGPOSettings(ObjectiveSettings):
    bgpo_draws: int = 16  # n_t masked copies per answer (the paper uses 32 for Sudoku)
    bgpo_dual_clip: float = 3.0  # c of the dual clip for A < 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bgpo_draws < 1:
            raise ConfigError(f"config key 'trainer.objective.bgpo_draws': expected >= 1, got {self.bgpo_draws}")
        if self.bgpo_dual_clip <= 1:
            raise ConfigError(f"config key 'trainer.objective.bgpo_dual_clip': expected > 1, got {self.bgpo_dual_clip}")


@dataclass
class BGPODraws:
    masks: list[list[torch.Tensor]]  # per sample, per draw
    fractions: list[list[float]]  # p_j = n_j / L_y


@register
class BGPOObjective(SequenceObjective):
    """BGPO: per-draw ELBOs with a linear (lower-bound) ratio for A ≥ 0."""

    name = "bgpo"
    Settings = BGPOSettings
    paper_defaults = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=1, normalize_std=True,
                          leave_one_out=False)
    has_kl = False

    def random_per_inner_step(self):
        return False  # drawn once per update, shared by θ_old and θ

    def sample_units(self, batch, hints, i):
        return self.s.bgpo_draws

    def draw(self, batch, hints, generator, inner_steps) -> BGPODraws:
        n_t = self.s.bgpo_draws
        draws = BGPODraws([], [])
        for traj, g in zip(batch.trajectories, sample_generators(batch, generator)):
            valid = loss_mask(traj, batch.stop).nonzero().squeeze(1)
            size = max(len(valid), 1)
            k = int(torch.randint(1, size + 1, (1,), generator=g))
            masks, fractions = [], []
            for n in stratified_counts(k, size, n_t):
                mask = torch.zeros(traj.gen_length, dtype=torch.bool)
                mask[valid[torch.randperm(len(valid), generator=g)[:n]]] = True
                masks.append(mask)
                fractions.append(n / size)
            draws.masks.append(masks)
            draws.fractions.append(fractions)
        return draws

    def masks(self, draws: BGPODraws, i, inner):
        return draws.masks[i]

    def unit_log_probs(self, policy, batch, prep, indices, inner):
        """Per sample: its n_t per-draw ELBOs l_j = Σ_masked ℓ / p_j / L."""
        per_canvas, entropy = self.canvas_log_probs(policy, batch, prep.draws, indices, inner)
        units, entropies = [], []
        for i in indices:
            L = batch.trajectories[i].gen_length
            masks, fractions = prep.draws.masks[i], prep.draws.fractions[i]
            units.append(torch.stack([lp[m.to(lp.device)].sum() / p / L
                                      for lp, m, p in zip(per_canvas[i], masks, fractions)]))
            entropies.append(masked_entropy(entropy[i], masks[0]).expand(len(masks)))  # one per unit, as counted
        return units, entropies

    def loss(self, policy, batch, prep, indices, total_units, inner=0):
        new, entropy = self.unit_log_probs(policy, batch, prep, indices, inner)
        logp = torch.cat(new)
        device = logp.device
        old = torch.cat([prep.old[0][i] for i in indices]).to(device)
        adv = torch.cat([batch.advantages[i].expand(self.s.bgpo_draws) for i in indices]).to(device).float()
        gap = logp - old
        ratio = torch.where(adv >= 0, 1 + gap, torch.exp(gap))
        low, high = 1 - self.s.clip_eps_low, 1 + self.s.clip_eps_high
        surrogate = torch.minimum(ratio * adv, ratio.clamp(low, high) * adv)
        surrogate = torch.where(adv < 0, torch.maximum(surrogate, self.s.bgpo_dual_clip * adv), surrogate)
        loss = -surrogate.sum() / total_units
        return loss, LossStats(units=float(len(logp)), entropy_sum=float(torch.cat(entropy).sum()),
                               ratio_sum=float(ratio.detach().sum()),
                               ratio_max_abs_dev=float((ratio.detach() - 1).abs().max()) if len(ratio) else 0.0,
                               clip_low=float(((ratio < low) & (adv < 0)).sum()),
                               clip_high=float(((ratio > high) & (adv > 0)).sum()))
