"""Masked-diffusion decoding: start from a canvas of [MASK] and commit tokens by confidence.

One decoding step = one forward pass over the whole canvas. Within the current
semi-autoregressive block, every masked position gets a proposed token; the commit
rule picks which proposals become final this step (LLaDA's low-confidence remasking
keeps the k most confident, `random` keeps k at random). k follows LLaDA's schedule:
the block's masked count split as evenly as possible over `steps`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rollouts.policy import DiffusionPolicy


@dataclass
class DecodingConfig:
    """The decoding policy knobs (DESIGN.md, "Decoding policies")."""

    gen_length: int = 32
    block_length: int | None = None  # None = gen_length (fully parallel)
    steps: int | None = None  # per block; None = block_length (one token per step)
    temperature: float = 0.0  # 0 = argmax
    commit: Literal["low_confidence", "random"] = "low_confidence"

    def __post_init__(self) -> None:
        if self.gen_length < 1:
            raise ValueError(f"gen_length must be >= 1, got {self.gen_length}")
        block = self.block_length or self.gen_length
        if block < 1 or self.gen_length % block:
            raise ValueError(f"block_length ({block}) must divide gen_length ({self.gen_length})")
        if self.steps is not None and not 1 <= self.steps <= block:
            raise ValueError(f"steps must be in [1, block_length={block}], got {self.steps}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def block(self) -> int:
        return self.block_length or self.gen_length

    @property
    def steps_per_block(self) -> int:
        return self.steps or self.block


@dataclass
class Generation:
    """Decoded answer canvases (B, gen_length) and the forward passes it took."""

    tokens: torch.Tensor
    forward_passes: int


def commit_schedule(masked: int, steps: int) -> list[int]:
    """How many tokens to commit at each of `steps` steps (LLaDA: even split, remainder first)."""
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (ids, attention_mask)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
    return ids, mask


@torch.no_grad()
def generate(
    policy: DiffusionPolicy,
    prompts: list[list[int]],
    cfg: DecodingConfig,
    generator: torch.Generator | None = None,
) -> Generation:
    """Decode one answer per prompt; returns the answer canvases, not the prompts."""
    ids = policy.ids
    prompt_ids, prompt_mask = left_pad(prompts, ids.pad)
    batch, width = prompt_ids.shape
    device = next(policy.model.parameters()).device
    canvas = torch.cat([prompt_ids, torch.full((batch, cfg.gen_length), ids.mask, dtype=torch.long)], 1).to(device)
    attention = torch.cat([prompt_mask, torch.ones((batch, cfg.gen_length), dtype=torch.long)], 1).to(device)
    forward_passes = 0
    for start in range(width, width + cfg.gen_length, cfg.block):
        block = slice(start, start + cfg.block)
        for k in commit_schedule(cfg.block, cfg.steps_per_block):
            logits = policy.logits(canvas, attention)[:, block].float()
            forward_passes += 1
            logits[..., ids.mask] = float("-inf")  # never propose [MASK] or [PAD] as an answer
            logits[..., ids.pad] = float("-inf")
            tokens, confidence = propose(logits, cfg.temperature, generator)
            masked = canvas[:, block] == ids.mask
            if cfg.commit == "random":
                confidence = torch.rand(confidence.shape, generator=generator, device=confidence.device)
            confidence = confidence.masked_fill(~masked, float("-inf"))
            take = min(k, int(masked.sum(1).max()))
            if take == 0:
                continue
            chosen = confidence.topk(take, dim=1).indices
            commit = torch.zeros_like(masked).scatter_(1, chosen, True) & masked
            canvas[:, block] = torch.where(commit, tokens, canvas[:, block])
    return Generation(tokens=canvas[:, width:].cpu(), forward_passes=forward_passes)


def propose(logits: torch.Tensor, temperature: float, generator: torch.Generator | None):
    """Token proposal per position and its probability under the (tempered) model."""
    if temperature == 0:
        probs = logits.softmax(-1)
        tokens = probs.argmax(-1)
    else:
        probs = (logits / temperature).softmax(-1)
        flat = probs.reshape(-1, probs.shape[-1])
        tokens = torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
    confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, confidence
