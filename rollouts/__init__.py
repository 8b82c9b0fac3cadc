"""Rollouts: the denoising sampler and the policy adapter it shares with the trainer."""

from rollouts.policy import DiffusionPolicy, TokenIds
from rollouts.sampler import DecodingConfig, Generation, generate

__all__ = ["DecodingConfig", "DiffusionPolicy", "Generation", "TokenIds", "generate"]
