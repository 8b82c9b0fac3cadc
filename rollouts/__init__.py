"""Rollouts: the denoising sampler, exact trajectories, replay, and rollout workers.

Nothing here imports `reasoning` or `rewards`; the trainer imports from here.
"""

from rollouts.families import load_pretrained, load_tokenizer
from rollouts.families.diffusion_gemma import DiffusionGemmaPolicy
from rollouts.policy import DiffusionPolicy, TokenIds, make_policy, stop_token_ids
from rollouts.replay import Replayed, replay
from rollouts.decoding import DecodingConfig
from rollouts.sampler import sample, sample_seed
from rollouts.trajectory import Trajectory, load_jsonl, save_jsonl

__all__ = ["DecodingConfig", "DiffusionGemmaPolicy", "DiffusionPolicy", "Replayed", "TokenIds", "Trajectory",
           "load_jsonl", "load_pretrained", "load_tokenizer", "make_policy", "replay", "sample", "sample_seed", "save_jsonl",
           "stop_token_ids"]
