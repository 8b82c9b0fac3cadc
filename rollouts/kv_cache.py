"""Approximate block KV caches for the sampler (`decoding.cache`), as Fast-dLLM defines them
(arXiv 2505.22618, checked against its reference code):

  none    every denoising step re-encodes the whole canvas (prompt + answer): exact.
  prefix  each block starts with a full forward (its logits do the block's first step, exactly
          as without a cache) whose keys/values are kept for the prefix — the prompt and the
          finished blocks; later steps of the block feed only the block and the suffix.
  dual    the same block-start forward, but the suffix (later, still-masked blocks) is kept
          too; later steps feed only the block.

A bidirectional model's prefix attends to the answer, so cached keys/values go stale as the
block fills in: the logits are an approximation after a block's first step. The trajectory
records the log-probs the sampler actually used (its behaviour policy) and that it used a
cache; the trainer replays with full attention and corrects the difference like a stale
rollout (importance weight, reasoning/objectives/base.py).

Cached positions and fed positions are disjoint and together cover the canvas; attention is
bidirectional, so the order of keys does not matter — the cache is simply the kept positions'
keys/values, rebuilt from the block-start forward at every step of the block.
"""

from __future__ import annotations

import torch

from rollouts.policy import position_ids


class BlockCache:
    """Per-row keys/values of the canvas as encoded at the start of the row's current block."""

    def __init__(self, policy, mode: str, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, width: int):
        if not policy.supports_kv_cache:
            raise ValueError(f"decoding setting 'cache': {mode} needs a model that takes a KV cache; "
                             f"{type(policy.model).__name__} does not (use cache none)")
        self.policy, self.mode, self.width = policy, mode, width
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.shift = 1 if policy.shift_logits else 0  # Dream: a position's logit sits one to the left
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (n, heads, N, d) per layer
        self._kept: tuple[tuple, list] | None = None  # (rows, block) -> the kept keys/values, reused in a block

    def block_logits(self, rows: torch.Tensor, answer: torch.Tensor, block: int, fresh: bool) -> tuple[torch.Tensor, int]:
        """Logits (R, W, V) at the positions of block `block` for `rows` (all in that block), and the
        number of tokens fed per row. `fresh`: the block's first step — a full forward that also
        refreshes these rows' cache (its logits are exactly the cache-free ones)."""
        canvas = torch.cat([self.prompt_ids[rows], answer], 1)
        attention = torch.cat([self.prompt_mask[rows], torch.ones_like(answer)], 1)
        positions = position_ids(attention)
        prompt_width, length = self.prompt_ids.shape[1], answer.shape[1]
        start = prompt_width + block * self.width  # the block's first canvas position
        if fresh:
            logits, cache = self.policy.cached_forward(canvas, attention, positions, keep=length + self.shift)
            self._store(rows, cache)
            self._kept = None
            logits = self.policy.shift_answer_logits(logits)[:, -length:]
            return logits[:, block * self.width:(block + 1) * self.width], canvas.shape[1]
        everything = torch.arange(canvas.shape[1], device=canvas.device)
        fed_end = start + self.width if self.mode == "dual" else canvas.shape[1]
        fed = everything[start - self.shift:fed_end]
        kept = everything[(everything < start - self.shift) | (everything >= fed_end)]
        cache = self._cache(rows, kept, block)
        logits, _ = self.policy.cached_forward(
            canvas[:, fed], torch.cat([attention[:, kept], attention[:, fed]], 1), positions[:, fed],
            keep=len(fed), cache=cache)
        return logits[:, :self.width], len(fed)  # outputs at start-shift … predict the block's W positions

    def _store(self, rows: torch.Tensor, cache) -> None:
        tensors = [(layer.keys, layer.values) for layer in cache.layers]
        if self.layers is None:
            n = self.prompt_ids.shape[0]
            self.layers = [(k.new_zeros((n, *k.shape[1:])), v.new_zeros((n, *v.shape[1:]))) for k, v in tensors]
        for (keys, values), (k, v) in zip(self.layers, tensors):
            keys[rows], values[rows] = k, v

    def _cache(self, rows: torch.Tensor, kept: torch.Tensor, block: int):
        """A fresh DynamicCache over the kept positions' keys/values. They are gathered once per
        block and row set and reused: the model appends the fed tokens' keys to a new tensor,
        never to the gathered ones."""
        from transformers import DynamicCache

        key = (block, tuple(rows.tolist()))
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, [(k[rows][:, :, kept], v[rows][:, :, kept]) for k, v in self.layers])
        cache = DynamicCache()
        for index, (keys, values) in enumerate(self._kept[1]):
            cache.update(keys, values, index)
        return cache
