"""The `rollout` config block: the decoding policy plus how RL gathers its groups (async producer,
hints, dynamic sampling, branching). reasoning/config.py assembles the whole config from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from reasoning.schema import ConfigError, setting_error
from rollouts.branching import BranchingConfig
from rollouts.decoding import DecodingConfig


@dataclass
class AsyncConfig:
    """`rollout.async`: generate step n+1's rollouts while the trainer updates on step n's."""

    enabled: bool = False
    # a rollout sampled by policy_version v is trained at trainer version v' only if v' - v <= this;
    # older ones are dropped (counted); 0 = generation waits for each update (the synchronous run)
    max_staleness: int = 1
    # in-process rollouts (no Ray, one trainer process), max_staleness >= 1: a trainer that has
    # finished its update samples the unclaimed chunks of the batch it waits for with its own,
    # newer weights, instead of idling (those samples are on-policy)
    trainer_samples: bool = True

    def __post_init__(self) -> None:
        if self.max_staleness < 0:
            raise ConfigError(f"config key 'rollout.async.max_staleness': expected >= 0, got {self.max_staleness}")


MAX_HINT_SAMPLES = 1024  # hinted answers per failed group: more is a typo, not a rollout


@dataclass
class HintsConfig:
    """`rollout.hints`: inpainting-guided groups (IGPO, arXiv 2509.10396) — a group whose answers
    all failed gets extra answers sampled with chunks of the task's reference answer pinned into
    the canvas; hinted answers that score higher replace some of the failed ones, so the group
    has reward variance and the policy learns from the tokens it wrote next to the hints
    (reasoning/groups.py)."""

    enabled: bool = False
    ratio: list[float] = field(default_factory=lambda: [0.2, 0.6])  # revealed fraction η ~ U[lo, hi] (IGPO)
    chunk: list[int] = field(default_factory=lambda: [2, 4])  # chunk sizes ~ UniformInt[lo, hi] tokens
    samples: int | None = None  # hinted answers drawn per failed group (null = rollout.group_size)
    replace_fraction: float = 0.5  # at most this fraction of the group is replaced (IGPO: 4 of 8)
    fail_reward: float = 0.0  # a group failed when every total reward is <= this
    # none: pinned tokens carry no gradient (they are not the policy's actions); entropy: also train,
    # per hinted answer, the `entropy_fraction` of its hint tokens with the highest entropy (IGPO's code)
    train_hints: Literal["none", "entropy"] = "none"
    entropy_fraction: float = 0.2

    def __post_init__(self) -> None:
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1] <= 1:
            raise ConfigError(f"config key 'rollout.hints.ratio': expected [lo, hi] with 0 < lo <= hi <= 1, "
                              f"got {self.ratio}")
        if len(self.chunk) != 2 or not 1 <= self.chunk[0] <= self.chunk[1]:
            raise ConfigError(f"config key 'rollout.hints.chunk': expected [lo, hi] token counts with "
                              f"1 <= lo <= hi, got {self.chunk}")
        if self.samples is not None and not 1 <= self.samples <= MAX_HINT_SAMPLES:
            raise ConfigError(f"config key 'rollout.hints.samples': expected 1 to {MAX_HINT_SAMPLES} hinted answers "
                              f"per failed group (null = rollout.group_size), got {self.samples}")
        if not 0 <= self.replace_fraction <= 1:
            raise ConfigError(f"config key 'rollout.hints.replace_fraction': expected in [0, 1], "
                              f"got {self.replace_fraction}")
        if not 0 < self.entropy_fraction <= 1:
            raise ConfigError(f"config key 'rollout.hints.entropy_fraction': expected in (0, 1], "
                              f"got {self.entropy_fraction}")
        if self.samples is not None and self.samples < 1:
            raise ConfigError(f"config key 'rollout.hints.samples': expected >= 1 (or null), got {self.samples}")
        if not math.isfinite(self.fail_reward):
            raise ConfigError(f"config key 'rollout.hints.fail_reward': expected a finite number, "
                              f"got {self.fail_reward}")


@dataclass
class DynamicSamplingConfig:
    """`rollout.dynamic_sampling`: DAPO's dynamic sampling (arXiv 2503.14476) — draw further prompts
    until the step holds `trainer.prompts_per_step` groups with reward variance, at most
    `max_draw_factor` × prompts_per_step prompts in all (reasoning/groups.py)."""

    enabled: bool = False
    max_draw_factor: float = 3.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_draw_factor) and self.max_draw_factor >= 1):
            raise ConfigError(f"config key 'rollout.dynamic_sampling.max_draw_factor': expected a number >= 1, "
                              f"got {self.max_draw_factor}")


@dataclass
class RolloutConfig(DecodingConfig):
    """Decoding policy used for RL rollouts (and for eval unless `eval.decoding` overrides it)."""

    group_size: int = 8  # G samples per prompt
    async_: AsyncConfig = field(default_factory=AsyncConfig)  # YAML key `async`
    hints: HintsConfig = field(default_factory=HintsConfig)
    dynamic_sampling: DynamicSamplingConfig = field(default_factory=DynamicSamplingConfig)
    # a tree of answers per prompt, grown from recorded canvases (rollouts/branching.py); off until measured
    branching: BranchingConfig = field(default_factory=BranchingConfig)

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise ConfigError(f"config key 'rollout.group_size': expected >= 1, got {self.group_size}")
        try:
            super().__post_init__()
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise (setting_error(exc, "rollout") or ConfigError(str(exc))) from None
        if self.branching.enabled and self.cache in ("prefix", "dual"):
            raise ConfigError(f"config key 'rollout.branching': a branch resumes a path mid-block, where the "
                              f"approximate cache: {self.cache} has no keys/values to resume from; use cache none "
                              f"(or block on a block-diffusion model)")
