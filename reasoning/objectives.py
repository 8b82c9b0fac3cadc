"""Policy-gradient objectives: how the log-probability of a sampled answer is estimated.

All three share one interface and one PPO-clip loss, so they can be swapped by
`trainer.objective` and ablated in one harness:

  trajectory  (default) the exact path: the log-prob of the tokens committed at every
              visited denoising state (plus the Plackett–Luce log-prob of the position
              choice when it was stochastic), replayed from the trajectory's events.
              Units = committed tokens (+ steps). With merge_steps = 1 the first ratio
              is exactly 1 (old = the behaviour log-probs recorded by the sampler).
  mean_field  d1's diffu-GRPO: one forward with the answer fully masked and prompt
              tokens masked with probability `prompt_mask_prob`; units = answer tokens.
  coupled     DiffuCoder's coupled sampling: a random mask and its complement, two
              forwards, each answer token scored where it was masked; units = answer tokens.

Loss (token-level PPO, DAPO-style aggregation): for each unit u of sample i with
advantage A_i, ratio r = exp(logp_u − old_u); L = −Σ min(r·A, clip(r, 1−ε_low, 1+ε_high)·A)
/ N_units, plus β·k3(ref‖θ) when `kl_coef` > 0, where the reference is the same model
with the LoRA adapter disabled (no second copy).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rollouts import DecodingConfig, DiffusionPolicy, Trajectory, replay
from rollouts.sampler import left_pad


@dataclass
class RolloutBatch:
    """The samples an update trains on (zero-variance groups already dropped)."""

    trajectories: list[Trajectory]
    advantages: torch.Tensor  # (N,)
    decoding: DecodingConfig


@dataclass
class ObjectiveSettings:
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    kl_coef: float = 0.0
    merge_steps: int = 1  # trajectory: score s consecutive steps from one state
    prompt_mask_prob: float = 0.15  # mean_field: d1's prompt masking
    replay_batch: int = 256  # trajectory: replayed states per forward


class Objective:
    """Base: subclasses define `unit_log_probs`; PPO, KL and statistics are shared."""

    name = ""

    def __init__(self, settings: ObjectiveSettings):
        self.s = settings
        self.old: list[torch.Tensor] = []
        self.ref: list[torch.Tensor] | None = None

    # --- what differs between objectives -------------------------------------------------

    def unit_log_probs(self, policy: DiffusionPolicy, batch: RolloutBatch,
                       indices: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per sample: log-probs of its scored units (with grad) and entropies (detached)."""
        raise NotImplementedError

    def begin(self, batch: RolloutBatch, generator: torch.Generator) -> None:
        """Draw whatever randomness the estimate needs, fixed for the whole update."""

    def behaviour_log_probs(self, batch: RolloutBatch) -> list[torch.Tensor] | None:
        """The sampler's own log-probs, when they are what this objective replays exactly."""
        return None

    # --- shared ----------------------------------------------------------------------------

    def prepare(self, policy: DiffusionPolicy, batch: RolloutBatch, generator: torch.Generator,
                reference: contextlib.AbstractContextManager | None = None, chunk: int = 64) -> None:
        """Old log-probs (θ at sampling time) and, with a KL term, the reference's."""
        self.begin(batch, generator)
        everything = list(range(len(batch.trajectories)))
        old = self.behaviour_log_probs(batch)
        if old is None:
            old = self._no_grad(policy, batch, everything, chunk)
        self.old = old
        self.ref = None
        if self.s.kl_coef > 0:
            if reference is None:
                raise ValueError("config key 'trainer.kl_coef' > 0 needs a reference policy: enable model.lora "
                                 "(the reference is the model with its adapter disabled)")
            with reference:
                self.ref = self._no_grad(policy, batch, everything, chunk)

    def _no_grad(self, policy, batch, indices, chunk) -> list[torch.Tensor]:
        out = []
        with torch.no_grad():
            for lo in range(0, len(indices), chunk):
                out.extend(t.detach() for t in self.unit_log_probs(policy, batch, indices[lo:lo + chunk])[0])
        return out

    def units(self, batch: RolloutBatch) -> int:
        return sum(len(o) for o in self.old)

    def loss(self, policy: DiffusionPolicy, batch: RolloutBatch, indices: list[int],
             total_units: int) -> tuple[torch.Tensor, dict[str, float]]:
        """This micro-batch's share of the loss (normalised by the whole batch's units)."""
        new, entropy = self.unit_log_probs(policy, batch, indices)
        logp = torch.cat(new)
        device = logp.device
        old = torch.cat([self.old[i] for i in indices]).to(device)
        adv = torch.cat([batch.advantages[i].expand(len(self.old[i])) for i in indices]).to(device)
        ratio = torch.exp(logp - old)
        low, high = 1 - self.s.clip_eps_low, 1 + self.s.clip_eps_high
        surrogate = torch.minimum(ratio * adv, ratio.clamp(low, high) * adv)
        loss = -surrogate.sum() / total_units
        stats = {
            "units": float(len(logp)),
            "ratio_sum": float(ratio.detach().sum()),
            "ratio_max_abs_dev": float((ratio.detach() - 1).abs().max()) if len(ratio) else 0.0,
            "clip_low": float(((ratio < low) & (adv < 0)).sum()),
            "clip_high": float(((ratio > high) & (adv > 0)).sum()),
            "entropy_sum": float(torch.cat(entropy).sum()) if entropy else 0.0,
        }
        if self.ref is not None:
            ref = torch.cat([self.ref[i] for i in indices]).to(device)
            delta = ref - logp
            kl = torch.exp(delta) - delta - 1  # k3: unbiased, always >= 0
            loss = loss + self.s.kl_coef * kl.sum() / total_units
            stats["kl_sum"] = float(kl.detach().sum())
        return loss, stats


class TrajectoryObjective(Objective):
    name = "trajectory"

    def behaviour_log_probs(self, batch):
        if self.s.merge_steps != 1:
            return None  # merged steps are scored from staler states: old = replay with the same merge
        stochastic = batch.decoding.stochastic_selection
        return [torch.cat([torch.tensor(t.event_logp[t.commits]),
                           torch.tensor(t.selection_logp if stochastic else t.selection_logp[:0])])
                for t in batch.trajectories]

    def unit_log_probs(self, policy, batch, indices):
        trajectories = [batch.trajectories[i] for i in indices]
        out = replay(policy, trajectories, batch.decoding, merge_steps=self.s.merge_steps,
                     micro_batch=self.s.replay_batch)
        stochastic = batch.decoding.stochastic_selection
        logps = [torch.cat([tok, sel if stochastic else sel[:0]]) for tok, sel in zip(out.token_logp, out.selection_logp)]
        return logps, out.token_entropy


class _AnswerTokenObjective(Objective):
    """Scores every answer token from masked canvases (mean_field, coupled)."""

    def canvases(self, batch, i: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """[(prompt_ids, answer_canvas, scored_positions)] for sample i."""
        raise NotImplementedError

    def unit_log_probs(self, policy, batch, indices):
        rows, owners = [], []
        for i in indices:
            for prompt, answer, scored in self.canvases(batch, i):
                rows.append((prompt, answer, scored))
                owners.append(i)
        prompt_ids, prompt_mask = left_pad([r[0].tolist() for r in rows], policy.ids.pad)
        answers = torch.stack([r[1] for r in rows])
        device = policy.device
        logp = policy.step_log_probs(prompt_ids.to(device), prompt_mask.to(device), answers.to(device),
                                     batch.decoding.temperature)
        positions: dict[int, list[torch.Tensor]] = {i: [] for i in indices}
        token_logps: dict[int, list[torch.Tensor]] = {i: [] for i in indices}
        entropies: dict[int, list[torch.Tensor]] = {i: [] for i in indices}
        for row, (i, (_, _, scored)) in enumerate(zip(owners, rows)):
            final = torch.as_tensor(batch.trajectories[i].final_tokens, device=device)
            where = scored.nonzero().squeeze(1).to(device)
            at = logp[row, where]
            positions[i].append(where)
            token_logps[i].append(at.gather(-1, final[where].unsqueeze(-1)).squeeze(-1))
            entropies[i].append(-(at.detach().exp() * at.detach()).sum(-1))
        logps, entropy = [], []
        for i in indices:
            order = torch.cat(positions[i]).argsort()  # every answer position once, in position order
            logps.append(torch.cat(token_logps[i])[order])
            entropy.append(torch.cat(entropies[i])[order])
        return logps, entropy


class MeanFieldObjective(_AnswerTokenObjective):
    name = "mean_field"

    def begin(self, batch, generator):
        self.prompt_masks = [torch.rand(len(t.prompt_ids), generator=generator) < self.s.prompt_mask_prob
                             for t in batch.trajectories]

    def canvases(self, batch, i):
        traj = batch.trajectories[i]
        prompt = torch.tensor(traj.prompt_ids).masked_fill(self.prompt_masks[i], traj.mask_id)
        answer = torch.full((traj.gen_length,), traj.mask_id)
        return [(prompt, answer, torch.ones(traj.gen_length, dtype=torch.bool))]


class CoupledObjective(_AnswerTokenObjective):
    name = "coupled"

    def begin(self, batch, generator):
        self.masks = []
        for traj in batch.trajectories:
            t = torch.rand(1, generator=generator)
            self.masks.append(torch.rand(traj.gen_length, generator=generator) < t)

    def canvases(self, batch, i):
        traj = batch.trajectories[i]
        final = torch.as_tensor(traj.final_tokens)
        prompt = torch.tensor(traj.prompt_ids)
        mask = self.masks[i]
        return [(prompt, final.masked_fill(mask, traj.mask_id), mask),
                (prompt, final.masked_fill(~mask, traj.mask_id), ~mask)]


OBJECTIVES = {cls.name: cls for cls in (TrajectoryObjective, MeanFieldObjective, CoupledObjective)}


def build_objective(name: str, settings: ObjectiveSettings) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"config key 'trainer.objective': unknown objective '{name}' "
                         f"(expected one of {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name](settings)
