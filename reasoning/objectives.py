"""Policy-gradient objectives: how an update turns sampled answers into a loss.

Five estimators share one interface (and the trainer, rollouts, advantages, PPO clip and KL
code), so `trainer.objective` swaps them on one harness. Each is its paper's estimator, as
stated in ../shared/ESTIMATORS.md from the reference code; where ours differs it says so.

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
  - Loss mask: the completion up to and including its first stop token (EOS / end of turn).
  - Normalisation (DAPO-style, global): the loss is a sum over units divided by the number of
    units in the whole update — all micro-batches and all ranks — so splitting a batch over
    micro-batches or processes never changes the gradient. Units are tokens (committed tokens
    for trajectory, loss-mask tokens for the others, Σ|y_i| for SPG), except wd1, whose paper
    sums within a group and averages groups: its unit is a group.
  - PPO clip (trajectory, mean_field, coupled): min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) per unit;
    KL: β·k3(ref‖θ) per unit against the model with its LoRA adapter disabled.
Differences from the reference code, on purpose: d1/wd1/SPG/DiffuCoder compute the inner-step
masks from a global seed; ours come from the trainer's per-step generator (same distribution,
resume-exact). Their trainers normalise per micro-batch; ours globally (above).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from rollouts import DecodingConfig, DiffusionPolicy, Trajectory, replay
from rollouts.sampler import left_pad
from rollouts.seeding import derive_seed

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


@dataclass
class RolloutBatch:
    """The samples an update trains on (zero-variance groups already dropped)."""

    trajectories: list[Trajectory]
    advantages: torch.Tensor  # (N,)
    decoding: DecodingConfig
    stop: tuple[int, ...] = ()  # ids that end an answer (the loss mask runs up to and including the first)
    policy_version: int | None = None  # the trainer's version at this update (None: every sample is fresh)

    def stale(self) -> list[int]:
        """Samples drawn by an older policy than the one being updated (asynchronous RL)."""
        if self.policy_version is None:
            return []
        return [i for i, t in enumerate(self.trajectories) if t.policy_version < self.policy_version]


@dataclass
class ObjectiveSettings:
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    merge_steps: int = 1  # trajectory: score s consecutive steps from one canvas (TraceRL shrink)
    prompt_mask_prob: float = 0.15  # mean_field, wd1, spg: d1's prompt masking
    importance_cap: float = 5.0  # stale samples: units with π_prox/π_behav above this are masked (AReaL)
    replay_batch: int = 256  # trajectory: replayed states per forward
    coupled_t: tuple[float, float] = (0.2, 0.8)  # coupled: t ~ U(lo, hi)
    spg_mode: str = "mix"  # spg, A <= 0: eubo | mix (ω·EUBO + (1−ω)·ELBO) | elbo
    spg_beta: float = 1.5  # spg: Rényi order of the EUBO (1.5 GSM8K/MATH/countdown-mix, 1.0 sudoku)
    spg_omega: float = 0.5
    spg_draws: int = 2  # n_t masks per inner step
    spg_block: int = 32  # b: block length of the block-random masking


def sample_generators(batch: "RolloutBatch", generator: torch.Generator) -> list[torch.Generator]:
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


class Objective:
    """Base: subclasses say which units they score (`unit_log_probs`) and what randomness they need
    (`draw`); the PPO-clip loss, the KL term, old log-probs and statistics are shared."""

    name = ""
    uses_ratio = True  # PPO-style: needs θ_old log-probs of the same units

    def __init__(self, settings: ObjectiveSettings):
        self.s = settings
        self.old: dict[int, list[torch.Tensor]] = {}
        self.ref: dict[int, list[torch.Tensor]] | None = None
        self.importance: dict[int, torch.Tensor] = {}  # stale sample -> per-unit importance weight (decoupled PPO)
        self.recorded: dict[int, torch.Tensor] = {}  # stale sample -> its behaviour log-probs
        self.pending_proximal: set[int] = set()  # stale samples whose π_prox comes from the next forward

    # --- what differs between objectives -------------------------------------------------

    def unit_log_probs(self, policy: DiffusionPolicy, batch: RolloutBatch, indices: list[int],
                       inner: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per sample: log-probs of its scored units at inner step `inner` (with grad), entropies (detached)."""
        raise NotImplementedError

    def draw(self, batch: RolloutBatch, generator: torch.Generator, inner_steps: int) -> None:
        """Draw the randomness of every inner step of this update (fixed for θ, θ_old and the reference)."""

    def random_per_inner_step(self) -> bool:
        """Whether the scored units change with the inner step (then θ_old is computed for each)."""
        return False

    def behaviour_log_probs(self, batch: RolloutBatch) -> list[torch.Tensor] | None:
        """The sampler's own log-probs, when they are exactly what this objective scores."""
        return None

    def recorded_log_probs(self, batch: RolloutBatch) -> list[torch.Tensor] | None:
        """The sampler's log-probs of this objective's units, as the rollout computed them (the
        behaviour policy of a stale sample); None where the rollout records no such thing."""
        return None

    # --- shared ----------------------------------------------------------------------------

    def prepare(self, policy: DiffusionPolicy, batch: RolloutBatch, generator: torch.Generator,
                reference: contextlib.AbstractContextManager | None = None, inner_steps: int = 1,
                chunk: int = 64) -> None:
        """Randomness, old log-probs (θ at the start of the update) and, with a KL term, the reference's."""
        self.draw(batch, generator, inner_steps)
        steps = range(inner_steps) if self.random_per_inner_step() else range(1)
        everything = list(range(len(batch.trajectories)))
        self.old, self.ref, self.importance = {}, None, {}
        if self.uses_ratio:
            behaviour = self.behaviour_log_probs(batch)
            for j in steps:
                self.old[j] = (list(behaviour) if behaviour is not None
                               else self._no_grad(policy, batch, everything, j, chunk))
            self._decouple(policy, batch, behaviour is not None, chunk)
        if self.s.kl_coef > 0:
            if reference is None:
                raise ValueError("config key 'trainer.kl_coef' > 0 needs a reference policy: enable model.lora "
                                 "(the reference is the model with its adapter disabled)")
            with reference:
                self.ref = {j: self._no_grad(policy, batch, everything, j, chunk) for j in steps}

    def _decouple(self, policy, batch: RolloutBatch, old_is_behaviour: bool, chunk: int) -> None:
        """Decoupled PPO (AReaL, arXiv 2505.24298 Eq. 5) for stale samples: clip around the proximal
        policy π_prox (θ at the start of this update) and weight each unit by the detached
        w = π_prox/π_behav, π_behav being what the sampler recorded; units with w above the cap are
        masked (AReaL's token mask). Fresh samples keep old = behaviour and w = 1. π_prox costs no
        extra forward: where old is not already a replay at θ_prox, it is taken (detached) from the
        first inner step's own forward, which runs at θ = θ_prox for every micro-batch."""
        stale = batch.stale()
        self.recorded, self.pending_proximal = {}, set()
        if not stale:
            return
        recorded = self.recorded_log_probs(batch)
        if recorded is None or self.random_per_inner_step():
            raise ValueError(f"objective '{self.name}' cannot train stale samples: the rollout does not record "
                             f"its units' behaviour log-probs (use objective trajectory, or max_staleness 0)")
        self.recorded = {i: recorded[i] for i in stale}
        if old_is_behaviour:
            self.pending_proximal = set(stale)
        else:
            for i in stale:
                self._weigh(i, self.old[0][i])

    def _weigh(self, i: int, proximal: torch.Tensor) -> None:
        self.old[0][i] = proximal
        weight = torch.exp(proximal - self.recorded[i].to(proximal.device))
        self.importance[i] = torch.where(weight > self.s.importance_cap, torch.zeros_like(weight), weight)

    def _slot(self, inner: int) -> int:
        return inner if self.random_per_inner_step() else 0

    def _no_grad(self, policy, batch, indices, inner, chunk) -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for lo in range(0, len(indices), chunk):
                out.extend(t.detach() for t in self.unit_log_probs(policy, batch, indices[lo:lo + chunk], inner)[0])
        return out

    def sample_units(self, batch: RolloutBatch, i: int) -> int:
        """How many loss units sample i contributes."""
        return int(loss_mask(batch.trajectories[i], batch.stop).sum())

    def units(self, batch: RolloutBatch) -> int:
        """Loss units of this process's batch (the trainer sums them over ranks)."""
        return sum(self.sample_units(batch, i) for i in range(len(batch.trajectories)))

    def loss(self, policy: DiffusionPolicy, batch: RolloutBatch, indices: list[int], total_units: float,
             inner: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        """This micro-batch's share of the PPO-clip loss: Σ over its units / `total_units` (global)."""
        new, entropy = self.unit_log_probs(policy, batch, indices, inner)
        for i, lp in zip(indices, new):
            if i in self.pending_proximal:  # first inner step: θ is still θ_prox
                self._weigh(i, lp.detach())
                self.pending_proximal.discard(i)
        logp = torch.cat(new)
        device = logp.device
        old_all = self.old[self._slot(inner)]
        old = torch.cat([old_all[i] for i in indices]).to(device)
        adv = torch.cat([batch.advantages[i].expand(len(old_all[i])) for i in indices]).to(device)
        ratio = torch.exp(logp - old)
        low, high = 1 - self.s.clip_eps_low, 1 + self.s.clip_eps_high
        surrogate = torch.minimum(ratio * adv, ratio.clamp(low, high) * adv)
        if self.importance:  # stale samples: importance weight π_prox/π_behav (detached), fresh ones 1
            weight = torch.cat([self.importance.get(i, torch.ones(len(old_all[i]))).to(device) for i in indices])
            surrogate = surrogate * weight
        loss = -surrogate.sum() / total_units
        stats = {
            "units": float(len(logp)),
            "ratio_sum": float(ratio.detach().sum()),
            "ratio_max_abs_dev": float((ratio.detach() - 1).abs().max()) if len(ratio) else 0.0,
            "clip_low": float(((ratio < low) & (adv < 0)).sum()),
            "clip_high": float(((ratio > high) & (adv > 0)).sum()),
            "entropy_sum": float(torch.cat(entropy).sum()) if entropy else 0.0,
        }
        stale = [self.importance[i] for i in indices if i in self.importance]
        if stale:
            stale_w = torch.cat(stale)
            stats.update(stale_units=float(len(stale_w)), importance_weight_sum=float(stale_w.sum()),
                         importance_masked=float((stale_w == 0).sum()))
        if self.ref is not None:
            ref = torch.cat([self.ref[self._slot(inner)][i] for i in indices]).to(device)
            kl = k3(ref, logp)
            loss = loss + self.s.kl_coef * kl.sum() / total_units
            stats["kl_sum"] = float(kl.detach().sum())
        return loss, stats


def k3(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(π_θ ‖ π_ref) per unit: e^{ref−θ} − (ref−θ) − 1 (unbiased, ≥ 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


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
        return int(batch.trajectories[i].commits.sum())

    def _combine(self, cfg: DecodingConfig, tokens: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(tokens)
        if self.trains_tokens(cfg):
            out = out + tokens
        if self.learned_selection(cfg):
            out = out + picks
        return out

    def recorded_log_probs(self, batch):
        return [self._combine(batch.decoding, torch.tensor(t.event_logp[t.commits]),
                              torch.tensor(t.event_selection_logp[t.commits])) for t in batch.trajectories]

    def behaviour_log_probs(self, batch):
        if self.s.merge_steps != 1:
            return None  # merged windows are scored from other canvases: old = replay with the same merge
        return self.recorded_log_probs(batch)

    def unit_log_probs(self, policy, batch, indices, inner):
        trajectories = [batch.trajectories[i] for i in indices]
        out = replay(policy, trajectories, batch.decoding, merge_steps=self.s.merge_steps,
                     micro_batch=self.s.replay_batch)
        logps = [self._combine(batch.decoding, tok, pick) for tok, pick in zip(out.token_logp, out.pick_logp)]
        return logps, out.token_entropy


# --- answer-token estimators: score the final answer from masked canvases --------------------------

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
            mask = loss_mask(batch.trajectories[i], batch.stop).to(per_canvas[i][0].device)
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
            self.masks.append([[self._block_random(t, batch.stop, g) for t, g in zip(batch.trajectories, per_sample)]
                               for _ in range(self.s.spg_draws)])

    def _block_random(self, traj: Trajectory, stop, generator):
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
        scored = masked & valid
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
        mask_entropy = [entropy[i][loss_mask(batch.trajectories[i], batch.stop)] for i in indices]
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
