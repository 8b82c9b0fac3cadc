"""DPO on ELBO estimates for masked diffusion LMs, and VRPO's variance reduction (LLaDA 1.5,
arXiv 2505.19223; as DARE's port computes it, yjyddq/DARE `dllm_core_algos.py`).

A masked DLM has no exact log-likelihood, so DPO's log π(y|x) is replaced by an ELBO estimate from
n masked copies of the answer y (prompt never masked, L the padded canvas, L_y its answer tokens up
to and including the first stop token):

    B̂(y) = (1/n) Σ_j Σ_{k ∈ M_j} log p_θ(y_k | x, y masked by M_j) / p_j / L,   p_j = |M_j| / L_y

and the loss is DPO's, −log σ(β[(B̂_θ(y_w) − B̂_ref(y_w)) − (B̂_θ(y_l) − B̂_ref(y_l))]).

  vrpo  the counts |M_j| are stratified (((round(k + j L_y/n) − 1) mod L_y) + 1, one k per answer),
        the whole budget goes to timesteps (one mask each), and the policy and the reference score
        the *same* masks: their errors cancel in B̂_θ − B̂_ref.
  dpo   the naive estimate: each |M_j| uniform in 1..L_y, and the reference draws its own masks.

The reference is the model with its LoRA adapter disabled, or a frozen copy of the starting weights
(full fine-tuning). The token distribution is the sampler's (softmax over every token but [MASK]).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reasoning.objectives.elbo import stratified_counts
from rollouts import DiffusionPolicy
from rollouts.decoding import left_pad


@dataclass
class ElboDraws:
    """The masked copies of a batch of answers: which positions each copy masks, and p_j."""

    masks: torch.Tensor  # (R, n, L) bool
    fractions: torch.Tensor  # (R, n) |M_j| / L_y


@dataclass
class PreferenceBatch:
    prompt_ids: list[list[int]]  # per pair
    chosen: torch.Tensor  # (B, L) canvases: the answer, then [EOS]
    rejected: torch.Tensor  # (B, L)


def answer_lengths(answers: torch.Tensor, stop: tuple[int, ...]) -> torch.Tensor:
    """(R,) L_y: the positions up to and including the first stop token (all of them if none)."""
    is_stop = torch.isin(answers, torch.tensor(stop or (-1,)))
    before = is_stop.long().cumsum(1) - is_stop.long()
    return (before == 0).sum(1)


def draw_masks(answers: torch.Tensor, stop: tuple[int, ...], draws: int, stratified: bool,
               generator: torch.Generator) -> ElboDraws:
    """`draws` masked copies of every answer row; positions among its first L_y, uniformly at random."""
    rows, length = answers.shape
    masks = torch.zeros(rows, draws, length, dtype=torch.bool)
    fractions = torch.zeros(rows, draws)
    for r, size in enumerate(answer_lengths(answers, stop).tolist()):
        if stratified:
            counts = stratified_counts(int(torch.randint(1, size + 1, (1,), generator=generator)), size, draws)
        else:
            counts = torch.randint(1, size + 1, (draws,), generator=generator).tolist()
        for j, count in enumerate(counts):
            masks[r, j, torch.randperm(size, generator=generator)[:count]] = True
            fractions[r, j] = count / size
    return ElboDraws(masks, fractions)


def per_draw_elbo(policy: DiffusionPolicy, prompts: list[list[int]], answers: torch.Tensor,
                  draws: ElboDraws) -> torch.Tensor:
    """(R, n) l_j = Σ_{k∈M_j} log p(y_k | masked copy j) / p_j / L, one forward over all R·n copies."""
    rows, n, length = draws.masks.shape
    prompt_ids, prompt_mask = left_pad([p for p in prompts for _ in range(n)], policy.ids.pad)
    targets = answers.repeat_interleave(n, 0)
    masks = draws.masks.reshape(rows * n, length)
    canvases = targets.masked_fill(masks, policy.ids.mask)
    device = policy.device
    logp = policy.step_log_probs(prompt_ids.to(device), prompt_mask.to(device), canvases.to(device), 1.0)
    token = logp.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1).float()
    total = (token * masks.to(device)).sum(1).view(rows, n)
    return total / draws.fractions.to(device) / length


@dataclass
class PreferenceStats:
    """Per pair (detached): implicit rewards β(B̂_θ − B̂_ref), the policy's ELBOs, and the variance of
    the per-draw estimate of the pair's score (what VRPO lowers)."""

    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    chosen_elbo: torch.Tensor
    rejected_elbo: torch.Tensor
    score_var: torch.Tensor  # var_j of β[(l_θ − l_ref)(y_w) − (l_θ − l_ref)(y_l)]_j / n

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """TRL's DPO metric names (rewards/*), the ELBOs in place of logps, and elbo/score_var."""
        margin = self.chosen_reward - self.rejected_reward
        return {f"{prefix}rewards/chosen": float(self.chosen_reward.mean()),
                f"{prefix}rewards/rejected": float(self.rejected_reward.mean()),
                f"{prefix}rewards/margins": float(margin.mean()),
                f"{prefix}rewards/accuracies": float((margin > 0).float().mean()),
                f"{prefix}elbo/chosen": float(self.chosen_elbo.mean()),
                f"{prefix}elbo/rejected": float(self.rejected_elbo.mean()),
                f"{prefix}elbo/prefers_chosen": float((self.chosen_elbo > self.rejected_elbo).float().mean()),
                f"{prefix}elbo/score_var": float(self.score_var.mean())}


def preference_loss(policy: DiffusionPolicy, reference: contextlib.AbstractContextManager, batch: PreferenceBatch,
                    stop: tuple[int, ...], beta: float, draws: int, estimator: str,
                    generator: torch.Generator) -> tuple[torch.Tensor, PreferenceStats]:
    """The mean DPO loss over the batch's pairs (with grad through the policy's ELBOs), and its stats.
    `reference` is a context in which `policy` computes the reference model's outputs."""
    size = len(batch.prompt_ids)
    answers = torch.cat([batch.chosen, batch.rejected])
    prompts = batch.prompt_ids + batch.prompt_ids
    vrpo = estimator == "vrpo"
    mine = draw_masks(answers, stop, draws, stratified=vrpo, generator=generator)
    theirs = mine if vrpo else draw_masks(answers, stop, draws, stratified=False, generator=generator)
    policy_draws = per_draw_elbo(policy, prompts, answers, mine)
    with torch.no_grad(), reference:
        reference_draws = per_draw_elbo(policy, prompts, answers, theirs)
    reward = beta * (policy_draws.mean(1) - reference_draws.mean(1))
    loss = -F.logsigmoid(reward[:size] - reward[size:]).mean()
    per_draw = beta * (policy_draws - reference_draws).detach()
    score = per_draw[:size] - per_draw[size:]
    score_var = score.var(1, correction=1) / draws if draws > 1 else torch.zeros(size, device=score.device)
    elbo = policy_draws.detach().mean(1)
    return loss, PreferenceStats(reward[:size].detach(), reward[size:].detach(), elbo[:size], elbo[size:], score_var)
