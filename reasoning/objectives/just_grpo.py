"""just_grpo: JustGRPO (arXiv 2601.15165; LeapLabTHU/JustGRPO@eebe50e `grpo.py`).

JustGRPO decodes one token per step, left to right (block 1, steps = gen_length, T = 1), so the
likelihood of an answer is exact: the log-prob of token t at the canvas [q, y_<t, [MASK]^{L−t}] the
sampler saw. That is the trajectory objective under one decoding rule, so this class is the
trajectory objective plus what JustGRPO's code does differently:

- every position of the canvas is trained, the pads after the first [EOS] included (its loss has
  no completion mask), so the rollout keeps decoding past the stop (`rollout.decode_past_stop`);
- the loss is Σ −A·ρ / (L · v̄), v̄ = the number of answers with A ≠ 0: one normalisation per
  answer of fixed length L, not per committed token;
- the advantage divides by the group's *sample* std (Bessel's correction) plus 1e-4
  (`trainer.std_correction: 1`), with μ = 1 so ρ ≡ 1 and the 0.2 clip never binds.

Its rewards are +1 / −1; ours are the task's (0 / 1): after dividing by the std the two give the
same advantages up to the 1e-4 in the denominator. docs/estimators.md has the formula.
"""

from __future__ import annotations

from reasoning.objectives.base import register
from reasoning.objectives.trajectory import TrajectoryObjective
from reasoning.schema import ConfigError
from rollouts import DecodingConfig


@register
class JustGRPOObjective(TrajectoryObjective):
    name = "just_grpo"
    paper_defaults = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_coef=0.0, inner_steps=1, normalize_std=True,
                          leave_one_out=False, std_correction=1)

    @classmethod
    def check_decoding(cls, decoding: DecodingConfig) -> None:
        """JustGRPO's rollout: one token per step, left to right, sampled from the full softmax, every
        position decoded. Any other rule would make this a different estimator."""
        required = {
            "block_length": (decoding.block == 1, 1, decoding.block_length),
            "steps": (decoding.total_steps == decoding.gen_length, f"null or gen_length ({decoding.gen_length})",
                      decoding.steps),
            "decode_past_stop": (decoding.decode_past_stop, True, decoding.decode_past_stop),
            "remask": (decoding.remask == "none", "none", decoding.remask),
            "latent_steps": (decoding.latent_steps == 0, 0, decoding.latent_steps),
            "top_k": (decoding.top_k is None, None, decoding.top_k),
            "top_p": (decoding.top_p == 1, 1.0, decoding.top_p),
        }
        for key, (ok, expected, got) in required.items():
            if not ok:
                raise ConfigError(f"config key 'rollout.{key}': objective just_grpo decodes one token per step, left "
                                  f"to right, every position (JustGRPO); expected {expected}, got {got}")

    def units(self, batch, prep):
        """L per answer with a non-zero advantage (JustGRPO's L · v̄), whatever it committed."""
        return sum(t.gen_length for t, a in zip(batch.trajectories, batch.advantages.tolist()) if a != 0)
