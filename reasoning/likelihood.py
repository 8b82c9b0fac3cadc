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
The token distribution is the sampler's own (rollouts: softmax over every token but [MASK];
LLaDA's cross-entropy also counts [MASK], whose probability a trained model puts near 0).
"""

from __future__ import annotations

import torch

from rollouts import DecodingConfig, DiffusionPolicy, sample


@torch.no_grad()
def mc_log_likelihood(policy: DiffusionPolicy, context: list[int], target: list[int], samples: int,
                      batch_size: int, generator: torch.Generator) -> float:
    """The Monte-Carlo estimate above from `samples` masked copies, `batch_size` per forward pass."""
    if policy.attention_block:
        raise ValueError("log-likelihood: block-diffusion models score block by block, which this estimator "
                         "does not do; use generate_until tasks for them")
    if not target:
        return 0.0
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


@torch.no_grad()
def is_greedy(policy: DiffusionPolicy, context: list[int], target: list[int]) -> bool:
    """Whether greedy decoding — one token a step, the most confident first, as LLaDA's
    `suffix_greedy_prediction` — writes exactly `target` after `context`."""
    if not target:
        return True
    decoding = DecodingConfig(gen_length=len(target), steps=len(target), temperature=0.0)
    decoded = sample(policy, [context], decoding, seeds=[0])[0].final_tokens
    return [int(t) for t in decoded] == list(target)
