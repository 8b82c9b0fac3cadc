"""The log-likelihood of a continuation under a masked diffusion LM, by Monte Carlo.

A masked DLM has no left-to-right factorisation to read a likelihood from. What it is trained
on, and what LLaDA's own evaluation reports (Nie et al. 2025, "Large Language Diffusion
Models", Eq. (6); `eval_llada.py` in ML-GSAI/LLaDA), is the lower bound

    log p(y | c) >= E_{l ~ U{1..L}} E_{M ⊂ {1..L}, |M| = l} [ (L / l) Σ_{i ∈ M} log p_θ(y_i | c, y_{¬M}) ]

for a continuation y of L tokens after the context c: mask l of its tokens (l uniform in 1..L,
the set uniform among those of size l), predict them all in one forward pass, weight by L / l.
The bound equals the average over all L! orders of the any-order autoregressive
log-likelihood Σ_k log p_θ(y_σ(k) | c, y_σ(<k)) — the test enumerates those orders.

As in LLaDA's evaluation, the l of one batch of samples are stratified — l_j = ((k + round(j L / b)
- 1) mod L) + 1 for a random k — which keeps the estimate unbiased and lowers its variance.
Block-diffusion models are scored block by block (`_block_mc_log_likelihood`). The token
distribution is the sampler's own (rollouts: softmax over every token but [MASK];
LLaDA's cross-entropy also counts [MASK], whose probability a trained model puts near 0).
"""

from __future__ import annotations

import numpy as np
import torch

from rollouts import DiffusionPolicy
from rollouts.block_packing import pack, pack_batch


@torch.no_grad()
def mc_log_likelihood(policy: DiffusionPolicy, context: list[int], target: list[int], samples: int,
                      batch_size: int, generator: torch.Generator) -> float:
    """The Monte-Carlo estimate above from `samples` masked copies, `batch_size` per forward pass."""
    if not target:
        return 0.0
    if policy.attention_block:
        return _block_mc_log_likelihood(policy, context, target, samples, batch_size, generator)
    device, length = policy.device, len(target)
    answer_ids = torch.tensor(target, device=device)
    total, done = 0.0, 0
    while done < samples:
        b = min(batch_size, samples - done)
        k = int(torch.randint(1, length + 1, (), generator=generator))
        spread = torch.round(torch.arange(b, dtype=torch.float64) * length / b).long()
        masked_count = ((k - 1 + spread) % length + 1).to(device)  # (b,) tokens masked per copy
        rank = torch.rand(b, length, generator=generator).argsort(1).argsort(1).to(device)
        is_masked = rank < masked_count[:, None]  # a uniform set of that size per copy
        canvas = torch.where(is_masked, policy.ids.mask, answer_ids)
        prompt = torch.tensor([context] * b, device=device)
        logp = policy.step_log_probs(prompt, torch.ones_like(prompt), canvas, temperature=1.0)
        token_logp = logp.gather(-1, answer_ids.expand(b, length).unsqueeze(-1)).squeeze(-1)
        total += float(((token_logp * is_masked).sum(1) * length / masked_count).sum())
        done += b
    return total / samples


def _block_mc_log_likelihood(policy: DiffusionPolicy, context: list[int], target: list[int], samples: int,
                             batch_size: int, generator: torch.Generator) -> float:
    """Block-diffusion models (attention causal across blocks): log p(y | c) = Σ_b log p(y_b | c, y_<b),
    each block's term bounded as above within the block, its earlier blocks clean. A sample masks
    l_b of each block's n_b continuation tokens (l_b uniform in 1..n_b, weight n_b / l_b); every
    block's copy is scored in one packed forward (rollouts/block_packing.py), as block-diffusion SFT
    trains them (SDAR / BD3-LM)."""
    width, length = policy.attention_block, len(target)
    offset = len(context) % width  # the continuation's first block completes the context's last one
    block = (np.arange(length) + offset) // width
    blocks = int(block[-1]) + 1
    answer, device = np.asarray(target, np.int64), policy.device
    total, done = 0.0, 0
    while done < samples:
        b = min(batch_size, samples - done)
        packs, masked, weight = [], torch.zeros(b, length, dtype=torch.bool), torch.zeros(b, length)
        for row in range(b):
            for k in range(blocks):
                where = torch.as_tensor(np.flatnonzero(block == k))
                count = int(torch.randint(1, len(where) + 1, (), generator=generator))
                masked[row, where[torch.randperm(len(where), generator=generator)[:count]]] = True
                weight[row, where] = len(where) / count
            noisy = np.where(masked[row].numpy(), policy.ids.mask, answer)
            packs.append(pack(context, answer, [(k, noisy) for k in range(blocks)], width, offset))
        ids, allowed, positions = pack_batch(packs, width, policy.ids.pad)
        logits = policy.model(input_ids=ids.to(device), attention_mask=allowed.to(device),
                              position_ids=positions.to(device)).logits
        for row, packed in enumerate(packs):  # answer position a of block k sits in copy k
            where = ids.shape[1] - len(packed.ids) + torch.as_tensor(packed.answer_start)[block] + torch.arange(length)
            logp = policy.answer_log_probs(logits[row, where.to(device)], 1.0)
            token_logp = logp.gather(-1, torch.as_tensor(answer, device=device)[:, None]).squeeze(-1).cpu()
            total += float((token_logp * masked[row] * weight[row]).sum())
        done += b
    return total / samples


@torch.no_grad()
def is_greedy(policy: DiffusionPolicy, context: list[int], target: list[int]) -> bool:
    """Whether greedy decoding — one token a step, the most confident (probability of its argmax)
    first, as LLaDA's `suffix_greedy_prediction`; a block-diffusion model's blocks in order — writes
    exactly `target` after `context`."""
    length, device = len(target), policy.device
    prompt = torch.tensor([context], device=device)
    answer = torch.full((1, length), policy.ids.mask, dtype=torch.long, device=device)
    width, positions = policy.attention_block, torch.arange(length, device=device)
    block = (positions + len(context) % width) // width if width else torch.zeros_like(positions)
    for _ in range(length):
        masked = answer[0] == policy.ids.mask
        masked &= block == block[masked].min()  # the earliest block with a [MASK] (all of them: one block)
        probs = policy.step_log_probs(prompt, torch.ones_like(prompt), answer, temperature=1.0)[0].exp()
        confidence, tokens = probs.max(-1)
        position = int(confidence.masked_fill(~masked, -1.0).argmax())
        answer[0, position] = tokens[position]
    return answer[0].tolist() == list(target)
