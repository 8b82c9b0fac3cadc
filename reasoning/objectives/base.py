"""What every objective shares: the batch an update trains on, the settings, what `prepare` hands
to `loss`, the loss statistics, the loss mask, the PPO-clip loss with decoupled importance weights
for stale samples, and the k3 KL term. docs/estimators.md states every objective's formula.

A new objective is one class, registered:

    from reasoning.objectives import Objective, register

    @register
    class MyObjective(Objective):
        name = "mine"  # paper_defaults, Settings, has_kl, trains_stale: see Objective
        def unit_log_probs(self, policy, batch, prep, indices, inner): ...

and `trainer.objective: mine` selects it; config validation and preflight ask the class what it
supports (`has_kl`, `trains_stale`, `trains_without_sampled_tokens`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch

from reasoning.objectives.batch import (StepBatch, full_mask_log_probs, loss_mask, pinned_mask,
                                        sample_generators)
from reasoning.schema import ConfigError
from rollouts import DecodingConfig, DiffusionPolicy

__all__ = ["OBJECTIVES", "HintTokens", "LossStats", "Objective", "ObjectiveSettings", "Prepared",
           "StepBatch", "build_objective", "full_mask_log_probs", "k3", "loss_mask", "objective_class", "pinned_mask",
           "register", "sample_generators"]


@dataclass
class ObjectiveSettings:
    """Settings every objective reads; an objective with more declares a subclass as its `Settings`."""

    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    importance_cap: float = 5.0  # stale samples: units with π_prox/π_behav above this are masked (AReaL)
    # hinted answers (rollout.hints): none = pinned tokens carry no gradient; entropy = IGPO's code:
    # per hinted answer, the `hint_entropy_fraction` of its hint tokens with the highest entropy of
    # θ_old's fully masked one-step prediction are trained, scored from that canvas
    train_hints: str = "none"
    hint_entropy_fraction: float = 0.2

    def __post_init__(self) -> None:
        for key in ("clip_eps_low", "clip_eps_high", "kl_coef"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"config key 'trainer.objective.{key}': expected >= 0, got {getattr(self, key)}")
        if not self.importance_cap >= 1:
            raise ConfigError(f"config key 'trainer.objective.importance_cap': expected >= 1, got {self.importance_cap}")


@dataclass
class HintTokens:
    """`train_hints: entropy`: per hinted sample, the hint tokens it trains and their θ_old log-probs."""

    keep: dict[int, torch.Tensor] = field(default_factory=dict)  # sample -> (L,) bool
    old: dict[int, torch.Tensor] = field(default_factory=dict)  # sample -> (n,) log-probs (fully masked canvas)


@dataclass
class Prepared:
    """What `Objective.prepare` computed for one update, and all that `Objective.loss` reads."""

    hints: HintTokens
    draws: Any  # the objective's own randomness for every inner step (masks, t, ...), from `draw`
    old: dict[int, list[torch.Tensor]]  # inner slot -> per sample: θ_old log-probs of its units
    ref: dict[int, list[torch.Tensor]] | None = None  # the same under the reference (KL), or None
    importance: dict[int, torch.Tensor] = field(default_factory=dict)  # stale sample -> per-unit weight
    recorded: dict[int, torch.Tensor] = field(default_factory=dict)  # stale sample -> behaviour log-probs
    # stale samples whose π_prox is taken (detached) from the first inner step's own forward, which
    # runs at θ = θ_prox: `loss` fills their `old` and `importance` then (no extra forward)
    pending_proximal: set[int] = field(default_factory=set)

    def set_proximal(self, i: int, proximal: torch.Tensor, cap: float) -> None:
        """π_prox of stale sample i is known: old = π_prox, weight = π_prox/π_behav (0 above `cap`)."""
        self.old[0][i] = proximal
        weight = torch.exp(proximal - self.recorded[i].to(proximal.device))
        self.importance[i] = torch.where(weight > cap, torch.zeros_like(weight), weight)
        self.pending_proximal.discard(i)


@dataclass
class LossStats:
    """Sums over one micro-batch's units (the update turns them into means). Ratio, clip and
    importance fields stay None for objectives that have no ratio (SPG, wd1) or no stale samples."""

    units: float
    entropy_sum: float
    ratio_sum: float | None = None
    ratio_max_abs_dev: float | None = None
    clip_low: float | None = None
    clip_high: float | None = None
    kl_sum: float | None = None
    stale_units: float | None = None
    importance_weight_sum: float | None = None
    importance_masked: float | None = None
    behaviour_gap_sum: float | None = None

    def items(self):
        """(name, value) of the fields that are set."""
        return [(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None]


class Objective:
    """Base: subclasses say which units they score (`unit_log_probs`), what randomness they need
    (`draw`) and what they support; the PPO-clip loss, the KL term, old log-probs, decoupled
    importance weights and statistics are shared. `prepare` returns a `Prepared` that `loss` reads:
    an objective instance holds only its settings."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type[ObjectiveSettings]] = ObjectiveSettings
    # trainer keys a config leaves null take these (inner_steps, clip, kl_coef, advantage baseline)
    paper_defaults: ClassVar[dict[str, Any]] = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0,
                                                     inner_steps=1, normalize_std=True, leave_one_out=False,
                                                     std_correction=0)
    uses_ratio: ClassVar[bool] = True  # PPO-style: needs θ_old log-probs of the same units
    has_kl: ClassVar[bool] = True  # a KL term to the reference is part of its loss
    # samples drawn by older weights (rollout.async) can be corrected: the rollout records its units'
    # behaviour log-probs
    trains_stale: ClassVar[bool] = False

    def __init__(self, settings: ObjectiveSettings):
        self.s = settings

    @classmethod
    def check_decoding(cls, decoding: DecodingConfig) -> None:
        """Raise a ConfigError naming the `rollout` key when the objective needs another decoding rule."""

    @classmethod
    def trains_without_sampled_tokens(cls, decoding: DecodingConfig) -> bool:
        """Whether rollouts at temperature 0 (argmax tokens, nothing sampled) leave it anything to train."""
        return False

    # --- what differs between objectives -------------------------------------------------

    def unit_log_probs(self, policy: DiffusionPolicy, batch: StepBatch, prep: Prepared, indices: list[int],
                       inner: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per sample: log-probs of its scored units at inner step `inner` (with grad), entropies (detached)."""
        raise NotImplementedError

    def draw(self, batch: StepBatch, hints: HintTokens, generator: torch.Generator, inner_steps: int) -> Any:
        """The randomness of every inner step of this update (fixed for θ, θ_old and the reference)."""
        return None

    def random_per_inner_step(self) -> bool:
        """Whether the scored units change with the inner step (then θ_old is computed for each)."""
        return False

    def behaviour_log_probs(self, batch: StepBatch, hints: HintTokens) -> list[torch.Tensor] | None:
        """The sampler's own log-probs, when they are exactly what this objective scores."""
        return None

    def recorded_log_probs(self, batch: StepBatch, hints: HintTokens) -> list[torch.Tensor] | None:
        """The sampler's log-probs of this objective's units, as the rollout computed them (the
        behaviour policy of a stale sample); None where the rollout records no such thing."""
        return None

    def off_policy(self, batch: StepBatch) -> list[int]:
        """Samples whose recorded log-probs are not θ_prox's: drawn by an older policy version."""
        return batch.stale()

    def sample_units(self, batch: StepBatch, hints: HintTokens, i: int) -> int:
        """How many loss units sample i contributes."""
        return int(self.answer_mask(batch, hints, i).sum())

    def unit_advantages(self, batch: StepBatch, hints: HintTokens, i: int, units: int) -> torch.Tensor:
        """(units,) the advantage of each of sample i's loss units: its answer's (leaf) advantage.
        The trajectory objective gives each committed event its step's (reasoning/credit.py)."""
        return batch.advantages[i].expand(units)

    def kl_units(self, ref: torch.Tensor, logp: torch.Tensor, batch: StepBatch, indices: list[int]) -> torch.Tensor:
        """The KL term per unit (β times its sum over the units, / the update's units, is added): k3."""
        return k3(ref, logp)

    def steps_without_signal(self, batch: StepBatch) -> bool:
        """Whether the update still takes its μ optimizer steps (zero gradients; Adam's momentum
        moves the weights) when no group of the step is informative: d1's trainer does."""
        return False

    def units(self, batch: StepBatch, prep: Prepared) -> int:
        """Loss units of this process's batch (the trainer sums them over ranks)."""
        return sum(self.sample_units(batch, prep.hints, i) for i in range(len(batch.trajectories)))

    # --- shared ----------------------------------------------------------------------------

    def prepare(self, policy: DiffusionPolicy, batch: StepBatch, generator: torch.Generator,
                reference: contextlib.AbstractContextManager | None = None, inner_steps: int = 1,
                chunk: int = 64) -> Prepared:
        """Hint tokens to train, randomness, old log-probs (θ at the start of the update) and, with a
        KL term, the reference's."""
        hints = self._select_hints(policy, batch, chunk)
        prep = Prepared(hints=hints, draws=self.draw(batch, hints, generator, inner_steps), old={})
        steps = range(inner_steps) if self.random_per_inner_step() else range(1)
        everything = list(range(len(batch.trajectories)))
        if self.uses_ratio:
            behaviour = self.behaviour_log_probs(batch, hints)
            for j in steps:
                prep.old[j] = (list(behaviour) if behaviour is not None
                               else self._no_grad(policy, batch, prep, everything, j, chunk))
            self._decouple(batch, prep, behaviour is not None)
        if self.s.kl_coef > 0:
            if reference is None:
                raise ValueError("config key 'trainer.kl_coef' > 0 needs a reference policy: enable model.lora "
                                 "(the reference is the model with its adapter disabled)")
            with reference:
                prep.ref = {j: self._no_grad(policy, batch, prep, everything, j, chunk) for j in steps}
        return prep

    def _decouple(self, batch: StepBatch, prep: Prepared, old_is_behaviour: bool) -> None:
        """Decoupled PPO (AReaL, arXiv 2505.24298 Eq. 5) for stale samples: clip around the proximal
        policy π_prox (θ at the start of this update) and weight each unit by the detached
        w = π_prox/π_behav, π_behav being what the sampler recorded; units with w above the cap are
        masked (AReaL's token mask). Fresh samples keep old = behaviour and w = 1. π_prox costs no
        extra forward: where old is not already a replay at θ_prox, it is taken (detached) from the
        first inner step's own forward, which runs at θ = θ_prox for every micro-batch."""
        stale = self.off_policy(batch)
        if not stale:
            return
        recorded = self.recorded_log_probs(batch, prep.hints)
        if recorded is None or self.random_per_inner_step():
            raise ValueError(f"objective '{self.name}' cannot train stale samples: the rollout does not record "
                             f"its units' behaviour log-probs (use objective trajectory, or max_staleness 0)")
        prep.recorded = {i: recorded[i] for i in stale}
        if old_is_behaviour:
            prep.pending_proximal = set(stale)
        else:
            for i in stale:
                prep.set_proximal(i, prep.old[0][i], self.s.importance_cap)

    def _slot(self, inner: int) -> int:
        return inner if self.random_per_inner_step() else 0

    def _no_grad(self, policy, batch, prep, indices, inner, chunk) -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for lo in range(0, len(indices), chunk):
                part = indices[lo:lo + chunk]
                out.extend(t.detach() for t in self.unit_log_probs(policy, batch, prep, part, inner)[0])
        return out

    # --- hinted answers (rollout.hints) ------------------------------------------------------

    def answer_mask(self, batch: StepBatch, hints: HintTokens, i: int) -> torch.Tensor:
        """(L,) bool: the answer tokens sample i trains — up to its first stop token, without pinned
        tokens (not the policy's actions) except the hint tokens selected by `train_hints: entropy`."""
        traj = batch.trajectories[i]
        mask = loss_mask(traj, batch.stop) & ~pinned_mask(traj)
        keep = hints.keep.get(i)
        return mask | keep if keep is not None else mask

    def _select_hints(self, policy, batch: StepBatch, chunk: int) -> HintTokens:
        """`train_hints: entropy`: per hinted sample, the top `hint_entropy_fraction` (at least one) of
        its hint tokens by the entropy of θ_old's fully masked one-step prediction (IGPO's filter)."""
        hints = HintTokens()
        if self.s.train_hints != "entropy":
            return hints
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
                hints.keep[i] = keep
                hints.old[i] = logp[row, chosen].gather(-1, torch.as_tensor(traj.final_tokens)[chosen, None])[:, 0]
        return hints

    def hint_log_probs(self, policy, batch: StepBatch, hints: HintTokens, indices: list[int]) -> tuple[list, list]:
        """Per sample of `indices`: log-probs (with grad) and entropies of its trained hint tokens,
        scored from the fully masked canvas (empty for samples without any)."""
        empty = torch.zeros(0, device=policy.device)
        logps, entropies = {i: empty for i in indices}, {i: empty for i in indices}
        hinted = [i for i in indices if i in hints.keep]
        if hinted:
            logp = full_mask_log_probs(policy, [batch.trajectories[i] for i in hinted])
            for row, i in enumerate(hinted):
                chosen = hints.keep[i].nonzero().squeeze(1).to(logp.device)
                final = torch.as_tensor(batch.trajectories[i].final_tokens, device=logp.device)
                at = logp[row, chosen]
                logps[i] = at.gather(-1, final[chosen, None])[:, 0]
                entropies[i] = -(at.detach().exp() * at.detach()).sum(-1)
        return [logps[i] for i in indices], [entropies[i] for i in indices]

    # --- the loss ----------------------------------------------------------------------------

    def loss(self, policy: DiffusionPolicy, batch: StepBatch, prep: Prepared, indices: list[int],
             total_units: float, inner: int = 0) -> tuple[torch.Tensor, LossStats]:
        """This micro-batch's share of the PPO-clip loss: Σ over its units / `total_units` (global)."""
        new, entropy = self.unit_log_probs(policy, batch, prep, indices, inner)
        for i, lp in zip(indices, new):
            if i in prep.pending_proximal:  # first inner step: θ is still θ_prox
                prep.set_proximal(i, lp.detach(), self.s.importance_cap)
        logp = torch.cat(new)
        device = logp.device
        old_all = prep.old[self._slot(inner)]
        old = torch.cat([old_all[i] for i in indices]).to(device)
        adv = torch.cat([self.unit_advantages(batch, prep.hints, i, len(old_all[i])) for i in indices]).to(device)
        ratio = torch.exp(logp - old)
        low, high = 1 - self.s.clip_eps_low, 1 + self.s.clip_eps_high
        surrogate = torch.minimum(ratio * adv, ratio.clamp(low, high) * adv)
        if prep.importance:  # stale samples: importance weight π_prox/π_behav (detached), fresh ones 1
            weight = torch.cat([prep.importance.get(i, torch.ones(len(old_all[i]))).to(device) for i in indices])
            surrogate = surrogate * weight
        loss = -surrogate.sum() / total_units
        stats = LossStats(
            units=float(len(logp)), entropy_sum=float(torch.cat(entropy).sum()) if entropy else 0.0,
            ratio_sum=float(ratio.detach().sum()),
            ratio_max_abs_dev=float((ratio.detach() - 1).abs().max()) if len(ratio) else 0.0,
            clip_low=float(((ratio < low) & (adv < 0)).sum()), clip_high=float(((ratio > high) & (adv > 0)).sum()))
        stale = [prep.importance[i] for i in indices if i in prep.importance]
        if stale:
            stale_w = torch.cat(stale)
            gap = torch.cat([(prep.old[0][i] - prep.recorded[i].to(device)).abs() for i in indices
                             if i in prep.importance])
            stats.stale_units, stats.importance_weight_sum = float(len(stale_w)), float(stale_w.sum())
            stats.importance_masked, stats.behaviour_gap_sum = float((stale_w == 0).sum()), float(gap.sum())
        if prep.ref is not None:
            ref = torch.cat([prep.ref[self._slot(inner)][i] for i in indices]).to(device)
            kl = self.kl_units(ref, logp, batch, indices)
            loss = loss + self.s.kl_coef * kl.sum() / total_units
            stats.kl_sum = float(kl.detach().sum())
        return loss, stats


def k3(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(π_θ ‖ π_ref) per unit: e^{ref−θ} − (ref−θ) − 1 (unbiased, ≥ 0)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


from reasoning.objectives.registry import OBJECTIVES, build_objective, objective_class, register  # noqa: E402
