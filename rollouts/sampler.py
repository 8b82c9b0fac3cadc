"""Masked-diffusion decoding that records the exact path it took.

The answer starts as a canvas of [MASK] (plus any pinned tokens). Each denoising step
is one forward pass (1 + `latent_steps` with latent thinking) over prompt + canvas;
within the current semi-autoregressive block it then
  1. revises (`remask: running_confidence`): committed tokens whose probability under
     the current prediction fell below `remask_threshold` go back to [MASK]
     (at most `remask_budget` per answer, lowest first);
  2. chooses how many masked positions to commit: k = ceil(remaining / steps left in
     the block) — LLaDA's even split; for a block-diffusion model (sdar, llada2) at least the
     count upstream fixes at the block's start — or, for `commit: threshold`, every position
     whose confidence exceeds `threshold` (at least k);
  3. chooses which: the k most confident (`low_confidence`), uniformly at random
     (`random`), or — with `selection_temperature` > 0 — a Plackett–Luce draw
     (Gumbel-top-k) over confidence / selection_temperature, whose log-prob is recorded;
  4. writes a token at each chosen position: the argmax (temperature 0) or a sample of
     softmax(logits / temperature), recording its log-prob.
A block ends when it has no [MASK]; once an answer holds a stop token ([EOS], or the chat
template's end of turn), its later blocks are not decoded (they are filled with [EOS] in `final_tokens`).

Every random draw of sample r comes from its own generator seeded by `seeds[r]`, so an
answer does not depend on which other prompts shared its batch or its worker.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rollouts.decoding import (DecodingConfig, StepDistribution, block_decoding, distribution_from_logits, left_pad,
                               resolve_confidence, step_distribution)
from rollouts.kv_cache import make_cache
from rollouts.policy import DiffusionPolicy
from rollouts.seeding import derive_seed
from rollouts.selection import gumbel_like, plackett_luce_terms
from rollouts.trajectory import Trajectory

__all__ = ["DecodingConfig", "check_prompts", "left_pad", "pin_tokens", "resolve_confidence", "sample",
           "sample_seed"]


def sample_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The seed of one (prompt, sample) pair: independent streams, same wherever it runs."""
    return derive_seed(seed, prompt_index, sample_index)


def check_prompts(policy: DiffusionPolicy, prompts: list[list[int]], cfg: DecodingConfig) -> None:
    if not prompts:
        raise ValueError("no prompts to decode")
    longest = max(len(p) for p in prompts)
    context = policy.context_length
    if context is not None and longest + cfg.gen_length > context:
        raise ValueError(f"a prompt of {longest} tokens plus decoding setting 'gen_length' ({cfg.gen_length}) "
                         f"exceeds the model's context of {context} positions (max_position_embeddings)")


def pin_tokens(answer: torch.Tensor, pinned: list[dict[int, int]] | None, mask_id: int) -> torch.Tensor:
    """Write pinned tokens into the answer canvases; returns the (B, L) pinned mask."""
    is_pinned = torch.zeros_like(answer, dtype=torch.bool)
    for row, pins in enumerate(pinned or []):
        for position, token in (pins or {}).items():
            if not 0 <= position < answer.shape[1]:
                raise ValueError(f"pinned position {position} is outside the answer canvas "
                                 f"(gen_length {answer.shape[1]})")
            if token == mask_id:
                raise ValueError(f"pinned token at position {position} is [MASK]; pin a real token")
            answer[row, position] = token
            is_pinned[row, position] = True
    return is_pinned


@torch.no_grad()
def sample(policy: DiffusionPolicy, prompts: list[list[int]], cfg: DecodingConfig, seeds: list[int],
           pinned: list[dict[int, int]] | None = None,
           starts: list[tuple[Trajectory, int] | None] | None = None) -> list[Trajectory]:
    """Decode one answer per prompt and return its trajectory (events + behaviour log-probs).

    `starts[r] = (trajectory, s)`: answer r continues that recorded trajectory from the canvas it
    entered step s with (a branch, rollouts/branching.py): its first s steps' events and log-probs
    are the trajectory's own, its pins are the trajectory's, and the block schedule, step count and
    re-mask budget resume where the trajectory was; only the draws from step s on are new (`seeds[r]`)."""
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
    check_prompts(policy, prompts, cfg)
    cfg = block_decoding(policy, cfg)
    measure = resolve_confidence(policy, cfg)
    ids, device, n, length, width = policy.ids, policy.device, len(prompts), cfg.gen_length, cfg.block
    prompt_ids, prompt_mask = (t.to(device) for t in left_pad(prompts, ids.pad))
    answer = torch.full((n, length), ids.mask, dtype=torch.long, device=device)
    is_pinned = pin_tokens(answer, pinned, ids.mask)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    block_budget = torch.tensor(cfg.block_steps(), device=device)
    # block-diffusion models: the answer's first block completes the prompt's last partial one
    offset = prompt_mask.sum(1) % width if policy.attention_block else torch.zeros(n, dtype=torch.long, device=device)
    num_blocks = (length + offset + width - 1) // width
    block = torch.zeros(n, dtype=torch.long, device=device)
    steps_in_block = torch.zeros(n, dtype=torch.long, device=device)
    remask_left = torch.full((n,), cfg.remask_budget, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    log = [_EventLog() for _ in range(n)]
    for r, start in enumerate(starts or []):
        if start is not None:
            _resume(r, *start, answer, is_pinned, block, steps_in_block, remask_left, log[r])
    offsets = torch.arange(width, device=device)
    stop = torch.tensor(ids.stop, device=device)  # EOS and end-of-turn: an answer holding one is done

    cache = make_cache(policy, cfg.cache, prompt_ids, prompt_mask, width, offset)
    fed = torch.zeros(n, dtype=torch.long, device=device)  # canvas tokens computed per row

    while not done.all():
        rows = (~done).nonzero().squeeze(1)
        start = block[rows] * width - offset[rows]  # answer position of the current block's first slot
        raw = start[:, None] + offsets  # (R, W); outside [0, length): the prompt's tail, or past the canvas
        valid = (raw >= 0) & (raw < length)
        positions = raw.clamp(0, length - 1)  # invalid slots read a valid slot of the same block
        if cache is None:
            canvas = step_distribution(policy, prompt_ids[rows], prompt_mask[rows], answer[rows], cfg, measure)
            step = canvas.at(positions)  # (R, W, V)
            fed[rows] += (prompt_ids.shape[1] + length) * (1 + cfg.latent_steps)
        else:
            canvas = None
            step = _cached_block_distribution(policy, cache, rows, answer, block, steps_in_block, cfg, measure, fed)
        logp = step.logp
        current = answer[rows].gather(1, positions)
        masked = (current == ids.mask) & valid
        prediction = (_one_forward_completion(answer[rows], canvas, step, positions, valid, ids)
                      if cfg.record_predictions else None)
        row_generators = [generators[r] for r in rows.tolist()]

        # 1. revision: committed tokens the model no longer believes go back to [MASK]
        remasked = torch.zeros_like(masked)
        if cfg.remask == "running_confidence":
            belief = logp.gather(-1, current.unsqueeze(-1)).squeeze(-1).exp()
            doubtful = valid & ~masked & ~is_pinned[rows].gather(1, positions) & (belief < cfg.remask_threshold)
            rank = belief.masked_fill(~doubtful, math.inf).argsort(1).argsort(1)  # 0 = least believed
            remasked = doubtful & (rank < remask_left[rows, None])
            remask_left[rows] -= remasked.sum(1)

        # 2. how many to commit
        candidates = masked  # [MASK] positions of the block (pins are never masked, re-masks wait a step)
        budget = block_budget[block[rows].clamp(max=len(block_budget) - 1)]  # an offset answer has one block more
        steps_left = (budget - steps_in_block[rows]).clamp(min=1)
        remaining = candidates.sum(1) + remasked.sum(1)
        count = torch.ceil(remaining / steps_left).long()
        if policy.attention_block:  # sdar, llada2: upstream's num_transfer_tokens, fixed when the block starts
            count = torch.maximum(count, _block_schedule(width, budget, steps_in_block[rows]))
        count = torch.minimum(count, candidates.sum(1))

        # 3. which tokens: a draw at every position of the block (only the chosen ones are committed)
        if cfg.temperature > 0:
            tokens = (logp + gumbel_like(logp.shape, row_generators, device)).argmax(-1)
        else:
            tokens = logp.argmax(-1)
        token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        conf = step.confidence(tokens)
        if cfg.commit == "threshold":
            count = torch.maximum(count, (candidates & (conf > cfg.threshold)).sum(1))

        # 4. which positions (ordered: the order is part of a Plackett–Luce draw)
        scores = step.selection_scores(conf)
        keys = scores + gumbel_like(scores.shape, row_generators, device) if cfg.stochastic_selection else scores
        order = keys.masked_fill(~candidates, -math.inf).argsort(1, descending=True)[:, :int(count.max())]
        event_selection_logp = (plackett_luce_terms(scores, candidates, order, count) if cfg.stochastic_selection
                           else torch.zeros(order.shape, device=device))
        # (R, picks) nats at the picked slots, in pick order (truncated tokens contribute 0)
        entropy = torch.special.entr(logp.gather(1, order[..., None].expand(-1, -1, logp.shape[-1])).exp()).sum(-1)

        chosen = torch.zeros_like(masked).scatter_(1, order, torch.arange(order.shape[1], device=device)
                                                   .unsqueeze(0) < count.unsqueeze(1))
        updated = torch.where(chosen, tokens, current.masked_fill(remasked, ids.mask))
        updated = updated.gather(1, positions - start[:, None])  # invalid slots repeat the valid slot they read
        answer[rows] = answer[rows].scatter(1, positions, updated)
        _record(log, rows, positions, remasked, order, count, tokens, token_logp, event_selection_logp, ids.mask,
                entropy, block, prediction)

        # block and answer bookkeeping
        steps_in_block[rows] += 1
        block_done = ~(updated == ids.mask).any(1)
        finished = rows[block_done]
        block[finished] += 1
        steps_in_block[finished] = 0
        decoded = torch.arange(length, device=device) < (block[finished, None] * width - offset[finished, None])
        has_eos = (torch.isin(answer[finished], stop) & decoded).any(1) & (not cfg.decode_past_stop)
        done[finished] = has_eos | (block[finished] >= num_blocks[finished])

    final = answer.masked_fill(answer == ids.mask, ids.eos).cpu().numpy()  # undecoded blocks after [EOS]
    return [log[r].trajectory(prompts[r], cfg, ids.mask, final[r], is_pinned[r].cpu(), seeds[r], int(fed[r]),
                              int(offset[r])) for r in range(n)]


def _block_schedule(width: int, budget: torch.Tensor, steps_in_block: torch.Tensor) -> torch.Tensor:
    """The least commits of each row's step in its block, as SDAR's and LLaDA2's samplers fix them at
    the block's start: `width // budget` per step, one more on the first `width % budget` steps, 0
    past the budget. Threshold commits above it never lower a later step's count (upstream does not
    recompute it), unlike the even split of what remains."""
    base, extra = width // budget, width % budget
    return torch.where(steps_in_block < budget, base + (steps_in_block < extra).long(), 0)


def _resume(r: int, parent: Trajectory, step: int, answer: torch.Tensor, is_pinned: torch.Tensor, block: torch.Tensor,
            steps_in_block: torch.Tensor, remask_left: torch.Tensor, log: "_EventLog") -> None:
    """Row r starts where `parent` entered `step`: its canvas, pins, block, steps spent in that
    block and re-masks left; its log holds the parent's events before `step`."""
    if parent.step_block is None:
        raise ValueError("a branch needs the block schedule of its parent trajectory (step_block), which "
                         "trajectories recorded before branching existed do not have")
    if not 0 < step < parent.num_steps:
        raise ValueError(f"a branch starts inside its parent's path: step {step} is not in 1..{parent.num_steps - 1}")
    answer[r] = torch.as_tensor(parent.state_at(step), device=answer.device)
    is_pinned[r] = False
    is_pinned[r, torch.as_tensor(parent.pinned_position, dtype=torch.long, device=answer.device)] = True
    block[r] = int(parent.step_block[step])
    steps_in_block[r] = int((parent.step_block[:step] == parent.step_block[step]).sum())
    upto = parent.step_bounds()[step]
    remask_left[r] -= int((parent.event_token[:upto] == parent.mask_id).sum())
    log.prefill(parent, step)


def _one_forward_completion(answer: torch.Tensor, canvas, step: StepDistribution, positions: torch.Tensor,
                            valid: torch.Tensor, ids) -> torch.Tensor:
    """(R, L) ŷ_t: every [MASK] filled with the step distribution's argmax, committed tokens kept,
    [EOS] after the first stop token. Through a KV cache only the current block is predicted; the
    blocks after it read as [EOS]."""
    if canvas is not None:
        argmax = canvas.logp.argmax(-1)
    else:
        argmax = torch.full_like(answer, ids.eos)
        argmax.scatter_(1, positions, torch.where(valid, step.logp.argmax(-1), ids.eos))
    filled = torch.where(answer == ids.mask, argmax, answer)
    is_stop = torch.isin(filled, torch.tensor(ids.stop, device=filled.device))
    after = is_stop.long().cumsum(1) - is_stop.long()
    return filled.masked_fill(after > 0, ids.eos)


def _cached_block_distribution(policy: DiffusionPolicy, cache, rows: torch.Tensor, answer: torch.Tensor,
                               block: torch.Tensor, steps_in_block: torch.Tensor, cfg: DecodingConfig, measure: str,
                               fed: torch.Tensor) -> StepDistribution:
    """The step distribution (R, W, V) of the rows' current blocks through the KV cache."""
    logits, tokens = cache.logits(rows, answer, block, steps_in_block)
    fed[rows] += tokens
    return distribution_from_logits(policy, logits, cfg, measure)


class _EventLog:
    """Events of one answer, appended step by step (numpy, on the CPU)."""

    def __init__(self) -> None:
        self.step, self.position, self.token, self.logp = [], [], [], []
        self.event_selection_logp, self.selection, self.entropy, self.block, self.prediction = [], [], [], [], []
        self.lineage = (np.zeros(0, np.int64), np.zeros(0, np.int32))

    def add_step(self, positions: np.ndarray, tokens: np.ndarray, logps: np.ndarray,
                 event_selection_logp: np.ndarray, entropy: np.ndarray, block: int,
                 prediction: np.ndarray | None) -> None:
        t = len(self.selection)
        self.step.append(np.full(len(positions), t, np.int32))
        self.position.append(positions.astype(np.int32))
        self.token.append(tokens.astype(np.int64))
        self.logp.append(logps.astype(np.float32))
        self.event_selection_logp.append(event_selection_logp.astype(np.float32))
        self.selection.append(float(np.nansum(event_selection_logp)))
        self.entropy.append(entropy.astype(np.float32))
        self.block.append(block)
        if prediction is not None:
            self.prediction.append(prediction.astype(np.int64))

    def prefill(self, parent: Trajectory, step: int) -> None:
        """The parent's first `step` steps, as recorded (a branch shares them)."""
        upto = parent.step_bounds()[step]
        self.step, self.position = [parent.event_step[:upto]], [parent.event_position[:upto]]
        self.token, self.logp = [parent.event_token[:upto]], [parent.event_logp[:upto]]
        self.event_selection_logp = [parent.event_selection_logp[:upto]]
        entropy = parent.event_entropy if parent.event_entropy is not None else np.full(len(parent.event_step), np.nan)
        self.entropy = [entropy[:upto].astype(np.float32)]
        self.selection, self.block = list(parent.selection_logp[:step]), list(parent.step_block[:step])
        if parent.step_prediction is not None:
            self.prediction = list(parent.step_prediction[:step])
        self.lineage = parent.lineage_until(step)

    def trajectory(self, prompt: list[int], cfg: DecodingConfig, mask_id: int, final: np.ndarray,
                   pinned: torch.Tensor, seed: int, forward_tokens: int = 0, block_offset: int = 0) -> Trajectory:
        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        where = pinned.nonzero().squeeze(1).numpy()
        prediction = np.stack(self.prediction).astype(np.int64) if self.prediction else None
        return Trajectory(
            prompt_ids=list(prompt), gen_length=cfg.gen_length, block_length=cfg.block, mask_id=mask_id,
            event_step=cat(self.step, np.int32), event_position=cat(self.position, np.int32),
            event_token=cat(self.token, np.int64), event_logp=cat(self.logp, np.float32),
            event_selection_logp=cat(self.event_selection_logp, np.float32), selection_logp=np.asarray(self.selection, np.float32), final_tokens=final.astype(np.int64),
            forward_passes=len(self.selection) * (1 + cfg.latent_steps), pinned_position=where.astype(np.int32),
            pinned_token=final[where].astype(np.int64), seed=seed, cache=cfg.cache, forward_tokens=forward_tokens,
            block_offset=block_offset, step_block=np.asarray(self.block, np.int32),
            event_entropy=cat(self.entropy, np.float32), step_prediction=prediction,
            branch_seeds=self.lineage[0], branch_steps=self.lineage[1],
        )


def _record(log: list[_EventLog], rows, positions, remasked, order, count, tokens, token_logp,
            event_selection_logp, mask_id: int, entropy, block, prediction) -> None:
    """Append this step's events: re-masks first, then commits in selection order, each commit
    with its token's log-prob, its pick's Plackett–Luce factor and its position's entropy."""
    positions, remasked, order = positions.cpu().numpy(), remasked.cpu().numpy(), order.cpu().numpy()
    count, tokens = count.cpu().numpy(), tokens.cpu().numpy()
    token_logp, event_selection_logp = token_logp.float().cpu().numpy(), event_selection_logp.float().cpu().numpy()
    entropy, block = entropy.float().cpu().numpy(), block.cpu().numpy()
    prediction = prediction.cpu().numpy() if prediction is not None else None
    for i, r in enumerate(rows.tolist()):
        undo = remasked[i].nonzero()[0]
        pick = order[i, :count[i]]
        log[r].add_step(
            positions=np.concatenate([positions[i, undo], positions[i, pick]]),
            tokens=np.concatenate([np.full(len(undo), mask_id), tokens[i, pick]]),
            logps=np.concatenate([np.full(len(undo), np.nan), token_logp[i, pick]]),
            event_selection_logp=np.concatenate([np.full(len(undo), np.nan), event_selection_logp[i, :count[i]]]),
            entropy=np.concatenate([np.full(len(undo), np.nan), entropy[i, :count[i]]]),
            block=int(block[r]), prediction=prediction[i] if prediction is not None else None,
        )
