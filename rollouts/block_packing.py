"""Block-wise packing for block-diffusion models (attention causal across blocks, bidirectional
within one): many canvases that differ only in one block each, scored in one forward.

A packed sequence holds the prompt and a clean answer ("clean" tokens, attending block-causally),
then copies of single blocks, each at its block's positions and with its own tokens. A copy
attends to the clean blocks before its own and to itself; nothing attends to a copy but the copy.
So the logits at a copy are exactly those of the canvas "clean blocks before it + this block" — what
the model computes for a denoising state of that block (later blocks are invisible to it anyway).

Replay uses it with one copy per denoising step (TraceRL's block-wise batching: every state of a
trajectory in one forward), block-diffusion SFT with one noised copy per answer block (SDAR /
BD3-LM's training rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Pack:
    """One packed sequence."""

    ids: np.ndarray  # (S,)
    positions: np.ndarray  # (S,) each token's position in the canvas
    owner: np.ndarray  # (S,) -1: the clean canvas; k: copy k
    answer_start: np.ndarray  # (K,) sequence index that answer position 0 has in copy k's coordinates
    # (only the positions of copy k's block are inside it)


def pack(prompt: list[int], answer: np.ndarray, copies: list[tuple[int, np.ndarray]], width: int,
         offset: int) -> Pack:
    """`answer`: the clean answer; `copies`: (block index, an answer canvas whose block holds the copy's
    tokens). Blocks are numbered over the answer with the prompt's last `offset` tokens in block 0."""
    prompt = np.asarray(prompt, np.int64)
    size, length = len(prompt), len(answer)
    ids, positions = [prompt, np.asarray(answer, np.int64)], [np.arange(size + length)]
    owner = [np.full(size + length, -1)]
    answer_start, used = np.zeros(len(copies), np.int64), size + length
    for k, (block, canvas) in enumerate(copies):
        lo = size + block * width - offset  # the block's first canvas index (the prompt's tail in block 0)
        hi = min(lo + width, size + length)
        ids.append(np.concatenate([prompt, np.asarray(canvas, np.int64)])[lo:hi])
        positions.append(np.arange(lo, hi))
        owner.append(np.full(hi - lo, k))
        answer_start[k] = used + size - lo
        used += hi - lo
    return Pack(np.concatenate(ids), np.concatenate(positions), np.concatenate(owner), answer_start)


def pack_batch(packs: list[Pack], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (ids, (B, 1, S, S) "may attend" mask, position ids). Clean tokens see clean tokens of
    their own and earlier blocks; a copy sees the clean blocks before its own and itself; padding sees
    only padding (so no row of the mask is empty)."""
    longest = max(len(p.ids) for p in packs)
    ids = torch.full((len(packs), longest), pad_id, dtype=torch.long)
    positions = torch.zeros((len(packs), longest), dtype=torch.long)
    owner = torch.full((len(packs), longest), -2, dtype=torch.long)  # -2: padding
    for row, p in enumerate(packs):
        ids[row, longest - len(p.ids):] = torch.as_tensor(p.ids)
        positions[row, longest - len(p.ids):] = torch.as_tensor(p.positions)
        owner[row, longest - len(p.ids):] = torch.as_tensor(p.owner)
    block = positions // width
    q_owner, k_owner = owner[:, :, None], owner[:, None, :]
    q_block, k_block = block[:, :, None], block[:, None, :]
    clean_key = (k_owner == -1) & ((k_block < q_block) | ((q_owner == -1) & (k_block == q_block)))
    allowed = clean_key | ((k_owner != -1) & (k_owner == q_owner))
    return ids, allowed.unsqueeze(1), positions


def block_span(block: int, width: int, offset: int, length: int) -> range:
    """The answer positions of a block."""
    return range(max(block * width - offset, 0), min((block + 1) * width - offset, length))
