"""Policy-gradient objectives: how an update turns sampled answers into a loss.

Nine estimators share one interface (and the trainer, rollouts, advantages, PPO clip and KL code),
so `trainer.objective` swaps them on one harness. Each is its paper's estimator, from its paper's
reference code; where ours differs, docs/estimators.md says so.

  trajectory  (ours) the exact visited path: every committed token at the state it was committed
              from, plus the position choice when it is a learned draw   objectives/trajectory.py
  just_grpo   JustGRPO: trajectory under its left-to-right decoding rule  objectives/just_grpo.py
  mean_field  d1's diffu-GRPO one-step estimate                           objectives/answer_tokens.py
  coupled     DiffuCoder's coupled-GRPO                                   objectives/answer_tokens.py
  spg         SPG's ELBO / EUBO sandwich, no ratio                        objectives/ratio_free.py
  wd1         wd1's weighted likelihood, no ratio                         objectives/ratio_free.py
  gdpo        GDPO's Gauss–Legendre sequence ELBO, GSPO-shaped ratio       objectives/elbo.py
  espo        ESPO's coupled sequence ELBO, stratified over the batch      objectives/elbo.py
  bgpo        BGPO's per-draw ELBOs, linear lower bound for A ≥ 0          objectives/elbo.py

Shared rules (objectives/base.py): the loss mask (the answer up to its first stop token, without
pinned hint tokens unless `train_hints: entropy`), one global normalisation (a sum over units
divided by the units of the whole update, every micro-batch and rank), token-level PPO clip, k3 KL
to the model with its adapter disabled, decoupled PPO for stale samples. A new objective is one
class with `@register` (objectives/base.py's docstring shows one).
"""

from reasoning.objectives.base import (OBJECTIVES, HintTokens, LossStats, Objective, ObjectiveSettings, Prepared,
                                       StepBatch, build_objective, k3, loss_mask, objective_class, pinned_mask,
                                       register, sample_generators)
from reasoning.objectives.trajectory import TrajectoryObjective, TrajectorySettings
from reasoning.objectives.just_grpo import JustGRPOObjective
from reasoning.objectives.answer_tokens import CoupledObjective, MeanFieldObjective  # noqa: I001 (registry order)
from reasoning.objectives.ratio_free import SPGObjective, WD1Objective
from reasoning.objectives.elbo import BGPOObjective, ESPOObjective, GDPOObjective

__all__ = ["OBJECTIVES", "BGPOObjective", "CoupledObjective", "ESPOObjective", "GDPOObjective", "HintTokens", "JustGRPOObjective", "LossStats", "MeanFieldObjective", "Objective",
           "ObjectiveSettings", "Prepared", "SPGObjective", "StepBatch", "TrajectoryObjective",
           "TrajectorySettings", "WD1Objective", "build_objective", "k3", "loss_mask", "objective_class",
           "paper_defaults", "pinned_mask", "register", "sample_generators"]


def paper_defaults(name: str) -> dict:
    """The trainer keys a config leaves null take these for objective `name`."""
    return dict(objective_class(name).paper_defaults)
