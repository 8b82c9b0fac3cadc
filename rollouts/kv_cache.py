"""KV caches for the sampler (`decoding.cache`). Fast-dLLM's approximate ones for bidirectional
models (arXiv 2505.22618, checked against its reference code):

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

And the exact one for block-diffusion models (SDAR, LLaDA2; rollouts/families/block.py):

  block   attention is causal across blocks, so a finished block's keys/values never change.
          Each step feeds the current block (at a block's first step also the block just
          finished, whose keys/values are then stored) against the stored prefix. The first
          step of the first block feeds the prompt with it: its complete blocks are the prefix.
          Same logits as the whole canvas (up to float summation order), so the trajectory
          needs no off-policy correction.
"""

from __future__ import annotations

import torch

from rollouts.policy import position_ids


def make_cache(policy, mode: str, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, width: int,
               offset: torch.Tensor):
    """The sampler's cache for `decoding.cache` (None for none). `offset`: per row, the prompt tokens
    in the answer's first block (block-diffusion models; zeros otherwise)."""
    if mode == "none":
        return None
    if mode == "block":
        return FinishedBlocksCache(policy, prompt_ids, prompt_mask, width, offset)
    return BlockCache(policy, mode, prompt_ids, prompt_mask, width)


def stored_cache(layers: list[tuple[torch.Tensor, torch.Tensor]]):
    """A transformers DynamicCache holding these (keys, values) per layer."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


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

    def logits(self, rows: torch.Tensor, answer: torch.Tensor, block: torch.Tensor,
               steps_in_block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (R, W, V) of the rows' current blocks and the tokens fed per row: rows are grouped
        by block and by whether this is the block's first step (a full forward that refreshes the
        cache)."""
        out, fed = None, torch.zeros(len(rows), dtype=torch.long, device=rows.device)
        for b in block[rows].unique().tolist():
            for fresh in (True, False):
                pick = ((block[rows] == b) & ((steps_in_block[rows] == 0) == fresh)).nonzero().squeeze(1)
                if len(pick) == 0:
                    continue
                group = rows[pick]
                logits, tokens = self.block_logits(group, answer[group], b, fresh)
                if out is None:
                    out = logits.new_empty((len(rows), *logits.shape[1:]))
                out[pick], fed[pick] = logits, tokens
        return out, fed

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
        key = (block, tuple(rows.tolist()))
        if self._kept is None or self._kept[0] != key:
            self._kept = (key, [(k[rows][:, :, kept], v[rows][:, :, kept]) for k, v in self.layers])
        return stored_cache(self._kept[1])


class FinishedBlocksCache:
    """`cache: block`: per row, the keys/values of canvas positions [0, cached) — left padding, the
    prompt's complete blocks and the finished answer blocks — all exact."""

    def __init__(self, policy, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, width: int, offset: torch.Tensor):
        """For a block-diffusion policy (rollouts/decoding.py `block_decoding` refuses `cache: block` otherwise)."""
        self.policy, self.width, self.offset = policy, width, offset
        self.prompt_ids, self.prompt_mask = prompt_ids, prompt_mask
        self.cached = torch.zeros(len(prompt_ids), dtype=torch.long, device=prompt_ids.device)
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (n, kv heads, canvas, d) per layer

    def logits(self, rows: torch.Tensor, answer: torch.Tensor, block: torch.Tensor,
               steps_in_block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (R, W, V) at the slots of the rows' current blocks, and the tokens fed per row.
        Rows are grouped by where their block starts and how much of their canvas is cached."""
        start = self.prompt_ids.shape[1] + block[rows] * self.width - self.offset[rows]  # canvas index
        cached = self.cached[rows]
        out, fed = None, torch.zeros(len(rows), dtype=torch.long, device=rows.device)
        for first, stored in torch.stack([start, cached], 1).unique(dim=0).tolist():
            pick = ((start == first) & (cached == stored)).nonzero().squeeze(1)
            logits, tokens = self._block(rows[pick], answer[rows[pick]], first, stored)
            if out is None:
                out = logits.new_empty((len(rows), *logits.shape[1:]))
            out[pick], fed[pick] = logits, tokens
        return out, fed

    def _block(self, rows: torch.Tensor, answer: torch.Tensor, start: int, cached: int) -> tuple[torch.Tensor, int]:
        canvas = torch.cat([self.prompt_ids[rows], answer], 1)
        attention = torch.cat([self.prompt_mask[rows], torch.ones_like(answer)], 1)
        end = min(start + self.width, canvas.shape[1])
        cache = stored_cache([(k[rows, :, :cached], v[rows, :, :cached]) for k, v in self.layers]) \
            if cached else None
        logits, grown = self.policy.cached_forward(canvas[:, cached:end], attention[:, :end],
                                                   position_ids(attention)[:, cached:end], keep=end - cached,
                                                   cache=cache)
        if start > cached:  # blocks finished since the last step (or the prompt's complete blocks): store them
            self._store(rows, grown, cached, start, canvas.shape[1])
            self.cached[rows] = start
        window = logits[:, start - cached:]
        if window.shape[1] < self.width:  # the canvas ends inside this block: its slots past the end are invalid
            window = torch.cat([window, window[:, -1:].expand(-1, self.width - window.shape[1], -1)], 1)
        return window, end - cached

    def _store(self, rows: torch.Tensor, cache, lo: int, hi: int, canvas_length: int) -> None:
        tensors = [(layer.keys, layer.values) for layer in cache.layers]
        if self.layers is None:
            n = self.prompt_ids.shape[0]
            self.layers = [(k.new_zeros((n, k.shape[1], canvas_length, k.shape[3])),
                            v.new_zeros((n, v.shape[1], canvas_length, v.shape[3]))) for k, v in tensors]
        for (keys, values), (k, v) in zip(self.layers, tensors):
            keys[rows, :, lo:hi], values[rows, :, lo:hi] = k[:, :, lo:hi], v[:, :, lo:hi]
