"""Which positions to commit: confidence measures and Plackett–Luce position selection.

Shared by the sampler (behaviour log-probs) and replay (log-probs under θ), so the two
compute the same numbers with the same code.

Confidence is a property of the predicted *distribution* at a position (not of a
sampled token), so the probability of a step factorises exactly as
P(positions | state) · Π P(token | state): the tokens proposed at positions that are
not committed never influence the recorded path.
"""

from __future__ import annotations

import math

import torch

EXCLUDED = -1e9  # score of a position that cannot be picked (finite, so gradients stay finite)


def confidence(logp: torch.Tensor, measure: str) -> torch.Tensor:
    """Per-position confidence in [0, 1] from log-probs (..., V).

    prob: the top token's probability (LLaDA); margin: top-1 minus top-2 probability;
    entropy: 1 - H(p) / log V.
    """
    probs = logp.exp()
    if measure == "prob":
        return probs.max(-1).values
    if measure == "margin":
        top = probs.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if measure == "entropy":
        entropy = -(probs * logp).sum(-1)
        return 1 - entropy / math.log(logp.shape[-1])
    raise ValueError(f"unknown confidence measure {measure!r} (expected prob, margin or entropy)")


def gumbel_like(shape: tuple[int, ...], generators: list[torch.Generator], device) -> torch.Tensor:
    """Gumbel(0, 1) noise with row r drawn from generators[r] (results do not depend on batching)."""
    rows = [torch.rand(shape[1:], generator=g, dtype=torch.float64) for g in generators]
    uniform = torch.stack(rows).clamp_(1e-20, 1 - 1e-16)
    return (-torch.log(-torch.log(uniform))).float().to(device)


def plackett_luce_log_prob(scores: torch.Tensor, candidates: torch.Tensor, order: torch.Tensor,
                           counts: torch.Tensor) -> torch.Tensor:
    """log P(order[r, :counts[r]] picked in that order, without replacement) per row.

    P = Π_j exp(s_{i_j}) / Σ_{remaining candidates} exp(s). Sampling this is Gumbel-top-k
    over `scores`; with equal scores it is a uniformly random order.
    scores, candidates: (R, L); order: (R, n_max) positions (padding ignored); counts: (R,).
    """
    s = scores.masked_fill(~candidates, EXCLUDED)
    total = scores.new_zeros(scores.shape[0])
    for j in range(order.shape[1]):
        valid = j < counts
        pick = order[:, j].clamp(min=0).unsqueeze(1)
        term = s.gather(1, pick).squeeze(1) - torch.logsumexp(s, 1)
        total = total + torch.where(valid, term, torch.zeros_like(term))
        s = s.scatter(1, pick, torch.where(valid.unsqueeze(1), EXCLUDED, s.gather(1, pick)))
    return total
