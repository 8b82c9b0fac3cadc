"""trajectory (ours): the policy gradient over the exact visited denoising path.

Each committed token's log-prob at the state it was committed from, at the rollout temperature
(the behaviour log-probs, so the first ratio is exactly 1 with merge_steps 1), plus — when the
position choice was a learned Plackett–Luce draw (selection_temperature > 0, not `random`) — that
commit's pick factor. One unit per committed token, weighted by its step's advantage (a branching
tree's segment, or an intermediate reward's; reasoning/credit.py). merge_steps > 1 is TraceRL's shrink
approximation (arXiv 2509.06949 §3): several steps scored from one canvas. Rollouts at T = 0
train only the pick factors (the tokens were never sampled). Stale samples (rollout.async) and
samples drawn through an approximate KV cache are corrected by decoupled PPO (objectives/base.py).
docs/estimators.md has the formula and what is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reasoning.objectives.base import HintTokens, Objective, ObjectiveSettings, register
from reasoning.schema import ConfigError
from rollouts import DecodingConfig, replay


@dataclass
class TrajectorySettings(ObjectiveSettings):
    merge_steps: int = 1  # score s consecutive steps from one canvas (TraceRL shrink; 1 = exact)
    replay_batch: int = 256  # replayed states per forward

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("merge_steps", "replay_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'trainer.objective.{key}': expected >= 1, got {getattr(self, key)}")


@register
class TrajectoryObjective(Objective):
    name = "trajectory"
    Settings = TrajectorySettings
    paper_defaults = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=1, normalize_std=True,
                          leave_one_out=False)
    trains_stale = True

    @staticmethod
    def learned_selection(cfg: DecodingConfig) -> bool:
        """The position choice is a draw whose probability depends on θ (not uniform `random`)."""
        return cfg.selection_temperature > 0 and cfg.commit != "random"

    @staticmethod
    def trains_tokens(cfg: DecodingConfig) -> bool:
        """At T = 0 the committed tokens were the argmax, never sampled: nothing to train there."""
        return cfg.temperature > 0

    @classmethod
    def trains_without_sampled_tokens(cls, decoding: DecodingConfig) -> bool:
        return cls.learned_selection(decoding)

    def sample_units(self, batch, hints: HintTokens, i):
        keep = hints.keep.get(i)
        return int(batch.trajectories[i].commits.sum()) + (int(keep.sum()) if keep is not None else 0)

    def unit_advantages(self, batch, hints: HintTokens, i, units):
        """Each committed event takes its step's advantage (a tree segment's, or an intermediate
        reward's: reasoning/credit.py); trained hint tokens take the answer's."""
        if batch.step_advantages is None:
            return super().unit_advantages(batch, hints, i, units)
        traj = batch.trajectories[i]
        per_step = torch.as_tensor(batch.step_advantages[i], dtype=torch.float32)
        events = per_step[torch.as_tensor(traj.event_step[traj.commits], dtype=torch.long)]
        return torch.cat([events, batch.advantages[i].expand(units - len(events))])

    def _combine(self, cfg: DecodingConfig, tokens: torch.Tensor, event_selection_logp: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(tokens)
        if self.trains_tokens(cfg):
            out = out + tokens
        if self.learned_selection(cfg):
            out = out + event_selection_logp
        return out

    def off_policy(self, batch):
        """Stale samples, and samples drawn through an approximate KV cache (decoding.cache): their
        recorded log-probs are the cached forwards', while the replay attends to the full canvas."""
        stale = set(batch.stale())
        return [i for i, t in enumerate(batch.trajectories) if i in stale or not t.exact_behaviour]

    def recorded_log_probs(self, batch, hints: HintTokens):
        """Per sample: its commits' behaviour log-probs, then (train_hints: entropy) its trained hint
        tokens' θ_old log-probs — hints were never sampled, θ_old is their behaviour."""
        return [torch.cat([self._combine(batch.decoding, torch.tensor(t.event_logp[t.commits]),
                                         torch.tensor(t.event_selection_logp[t.commits])),
                           hints.old.get(i, torch.zeros(0))]) for i, t in enumerate(batch.trajectories)]

    def behaviour_log_probs(self, batch, hints: HintTokens):
        if self.s.merge_steps != 1:
            return None  # merged windows are scored from other canvases: old = replay with the same merge
        return self.recorded_log_probs(batch, hints)

    def unit_log_probs(self, policy, batch, prep, indices, inner):
        trajectories = [batch.trajectories[i] for i in indices]
        out = replay(policy, trajectories, batch.decoding, merge_steps=self.s.merge_steps,
                     micro_batch=self.s.replay_batch)
        logps = [self._combine(batch.decoding, tok, pick) for tok, pick in zip(out.token_logp, out.event_selection_logp)]
        if not prep.hints.keep:
            return logps, out.token_entropy
        hint_logps, hint_entropy = self.hint_log_probs(policy, batch, prep.hints, indices)
        return ([torch.cat([lp, h.to(lp.device)]) for lp, h in zip(logps, hint_logps)],
                [torch.cat([e, h.to(e.device)]) for e, h in zip(out.token_entropy, hint_entropy)])
