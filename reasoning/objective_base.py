"""What every objective shares: the batch an update trains on, the settings, the loss mask, the
PPO-clip loss with decoupled importance weights for stale samples, and the k3 KL term.
The estimators themselves are in reasoning/objectives.py (trajectory) and
reasoning/answer_estimators.py (mean_field, coupled, spg, wd1)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rollouts import DecodingConfig, DiffusionPolicy, Trajectory
from rollouts.sampler import left_pad
from rollouts.seeding import derive_seed

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
    # hinted answers (rollout.hints): none = pinned tokens carry no gradient; entropy = IGPO's code:
    # per hinted answer, the `hint_entropy_fraction` of its hint tokens with the highest entropy of
    # θ_old's fully masked one-step prediction are trained, scored from that canvas
    train_hints: str = "none"
    hint_entropy_fraction: float = 0.2


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
        self.hint_keep: dict[int, torch.Tensor] = {}  # hinted sample -> (L,) bool: hint tokens it trains
        self.hint_old: dict[int, torch.Tensor] = {}  # ... their log-probs under θ_old (fully masked canvas)

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
        """Hint tokens to train, randomness, old log-probs (θ at the start of the update) and, with a
        KL term, the reference's."""
        self._select_hints(policy, batch, chunk)
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
        stale = self.off_policy(batch)
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

    def off_policy(self, batch: RolloutBatch) -> list[int]:
        """Samples whose recorded log-probs are not θ_prox's: drawn by an older policy version."""
        return batch.stale()

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
        return int(self.answer_mask(batch, i).sum())

    # --- hinted answers (rollout.hints) ------------------------------------------------------

    def answer_mask(self, batch: RolloutBatch, i: int) -> torch.Tensor:
        """(L,) bool: the answer tokens sample i trains — up to its first stop token, without pinned
        tokens (not the policy's actions) except the hint tokens selected by `train_hints: entropy`."""
        traj = batch.trajectories[i]
        mask = loss_mask(traj, batch.stop) & ~pinned_mask(traj)
        keep = self.hint_keep.get(i)
        return mask | keep if keep is not None else mask

    def _select_hints(self, policy, batch: RolloutBatch, chunk: int) -> None:
        """`train_hints: entropy`: per hinted sample, the top `hint_entropy_fraction` (at least one) of
        its hint tokens by the entropy of θ_old's fully masked one-step prediction (IGPO's filter)."""
        self.hint_keep, self.hint_old = {}, {}
        if self.s.train_hints != "entropy":
            return
        hinted = [i for i, t in enumerate(batch.trajectories) if t.hinted and len(t.pinned_position)]
        for lo in range(0, len(hinted), chunk):
            part = hinted[lo:lo + chunk]
            with torch.no_grad():
                logp = full_mask_log_probs(policy, [batch.trajectories[i] for i in part]).float().cpu()
            for row, i in enumerate(part):
                traj = batch.trajectories[i]
                positions = (pinned_mask(traj) & loss_mask(traj, batch.stop)).nonzero().squeeze(1)
                if not len(positions):
                    continue
                at = logp[row, positions]
                entropy = -(at.exp() * at).sum(-1)
                k = max(1, int(self.s.hint_entropy_fraction * len(positions)))
                keep = torch.zeros(traj.gen_length, dtype=torch.bool)
                keep[positions[entropy.topk(k).indices]] = True
                chosen = keep.nonzero().squeeze(1)
                self.hint_keep[i] = keep
                self.hint_old[i] = logp[row, chosen].gather(-1, torch.as_tensor(traj.final_tokens)[chosen, None])[:, 0]

    def hint_log_probs(self, policy, batch: RolloutBatch, indices: list[int]) -> tuple[list, list]:
        """Per sample of `indices`: log-probs (with grad) and entropies of its trained hint tokens,
        scored from the fully masked canvas (empty for samples without any)."""
        empty = torch.zeros(0, device=policy.device)
        logps, entropies = {i: empty for i in indices}, {i: empty for i in indices}
        hinted = [i for i in indices if i in self.hint_keep]
        if hinted:
            logp = full_mask_log_probs(policy, [batch.trajectories[i] for i in hinted])
            for row, i in enumerate(hinted):
                chosen = self.hint_keep[i].nonzero().squeeze(1).to(logp.device)
                final = torch.as_tensor(batch.trajectories[i].final_tokens, device=logp.device)
                at = logp[row, chosen]
                logps[i] = at.gather(-1, final[chosen, None])[:, 0]
                entropies[i] = -(at.detach().exp() * at.detach()).sum(-1)
        return [logps[i] for i in indices], [entropies[i] for i in indices]

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
            gap = torch.cat([(self.old[0][i] - self.recorded[i].to(device)).abs() for i in indices
                             if i in self.importance])
            stats.update(stale_units=float(len(stale_w)), importance_weight_sum=float(stale_w.sum()),
                         importance_masked=float((stale_w == 0).sum()), behaviour_gap_sum=float(gap.sum()))
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
