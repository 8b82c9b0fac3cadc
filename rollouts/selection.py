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


CONFIDENCES = ("chosen_prob", "max_prob", "margin", "entropy")


def confidence(logp: torch.Tensor, measure: str, tokens: torch.Tensor | None = None,
               temperature: float = 1.0) -> torch.Tensor:
    """Per-position confidence in [0, 1] from the sampling log-probs (..., V) = log softmax(z / T).

    chosen_prob: LLaDA's reference rule — the probability of the sampled token `tokens` under
                 the *untempered* softmax(z) (no sampling noise in it);
    max_prob:    the top token's probability under softmax(z / T);
    margin:      top-1 minus top-2 probability (Dream's topk_margin); entropy: 1 - H(p) / log V
                 (a monotone form of Dream's `entropy` rule), both under softmax(z / T).
    Only chosen_prob depends on the sampled tokens; the others are properties of the
    distribution, so with them a step's probability factorises as P(positions) · Π P(tokens).
    """
    if measure == "chosen_prob":
        if tokens is None:
            raise ValueError("confidence 'chosen_prob' needs the sampled tokens")
        untempered = (logp * temperature).log_softmax(-1) if temperature > 0 else logp
        return untempered.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).exp()
    probs = logp.exp()
    if measure in ("max_prob", "prob"):
        return probs.max(-1).values
    if measure == "margin":
        top = probs.topk(2, dim=-1).values
        return top[..., 0] - top[..., 1]
    if measure == "entropy":
        entropy = -(probs * logp).sum(-1)
        return 1 - entropy / math.log(logp.shape[-1])
    raise ValueError(f"unknown confidence measure {measure!r} (expected {', '.join(CONFIDENCES)})")


def truncate(logp: torch.Tensor, top_k: int | None = None, top_p: float = 1.0) -> torch.Tensor:
    """log-probs (..., V) restricted to the `top_k` most likely tokens and then to the smallest set whose
    probability reaches `top_p` (the most likely token always stays), renormalised. Applied the same
    way in sampling and in replay, so a sampled token's log-prob stays finite and replay exact."""
    if not top_k and top_p >= 1.0:
        return logp
    keep = torch.ones_like(logp, dtype=torch.bool)
    if top_k and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[..., -1:]
        keep &= logp >= kth
    if top_p < 1.0:
        sorted_logp, order = logp.masked_fill(~keep, EXCLUDED).sort(-1, descending=True)
        before = sorted_logp.exp().cumsum(-1) - sorted_logp.exp()  # mass of the more likely tokens
        keep_sorted = before < top_p
        keep &= torch.zeros_like(keep).scatter(-1, order, keep_sorted)
    return logp.masked_fill(~keep, EXCLUDED).log_softmax(-1)


def gumbel_like(shape: tuple[int, ...], generators: list[torch.Generator], device) -> torch.Tensor:
    """Gumbel(0, 1) noise with row r drawn from generators[r] (results do not depend on batching)."""
    rows = [torch.rand(shape[1:], generator=g, dtype=torch.float64) for g in generators]
    uniform = torch.stack(rows).clamp_(1e-20, 1 - 1e-16)
    return (-torch.log(-torch.log(uniform))).float().to(device)


def plackett_luce_terms(scores: torch.Tensor, candidates: torch.Tensor, order: torch.Tensor,
                        counts: torch.Tensor) -> torch.Tensor:
    """(R, n_max): the log-prob of each pick order[r, j] given the picks before it (0 past counts[r]).

    P(order) = Π_j exp(s_{i_j}) / Σ_{remaining candidates} exp(s): one factor per committed
    position, so the choice of positions is scored per token like the tokens themselves.
    Sampling this is Gumbel-top-k over `scores`; with equal scores it is a uniformly random order.
    scores, candidates: (R, L); order: (R, n_max) positions (padding ignored); counts: (R,).
    """
    s = scores.masked_fill(~candidates, EXCLUDED)
    terms = []
    for j in range(order.shape[1]):
        valid = j < counts
        pick = order[:, j].clamp(min=0).unsqueeze(1)
        term = s.gather(1, pick).squeeze(1) - torch.logsumexp(s, 1)
        terms.append(torch.where(valid, term, torch.zeros_like(term)))
        s = s.scatter(1, pick, torch.where(valid.unsqueeze(1), EXCLUDED, s.gather(1, pick)))
    return torch.stack(terms, 1) if terms else scores.new_zeros(scores.shape[0], 0)


def plackett_luce_log_prob(scores: torch.Tensor, candidates: torch.Tensor, order: torch.Tensor,
                           counts: torch.Tensor) -> torch.Tensor:
    """log P(order[r, :counts[r]] picked in that order, without replacement) per row."""
    return plackett_luce_terms(scores, candidates, order, counts).sum(1)
