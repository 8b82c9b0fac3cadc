"""Recompute a trajectory's log-probs under the current weights, with gradients.

Each recorded step t is replayed from the canvas the sampler saw (`state_at(t)`): one
forward (plus the latent-thinking passes) gives the log-probs of the tokens committed
at t and, when the position choice was stochastic, the Plackett–Luce log-prob of the
positions picked. States of many steps and trajectories are batched into few forward
passes (`micro_batch` states each).

`merge_steps` s > 1 is TraceRL's "shrink" approximation: the tokens of s consecutive
steps are scored from one canvas — the state at the window's first step with every
position committed inside the window masked (so no scored position is ever visible in
the canvas it is scored from, also when it was committed, re-masked and committed again
within the window). s times fewer forwards, but no longer the exact path probability.
Only s = 1 reproduces the behaviour log-probs exactly (docs/architecture.md, invariant 1).

Block-diffusion models (SDAR, LLaDA2: attention causal across blocks) are replayed by block-wise
packing (rollouts/block_packing.py), as TraceRL does: the steps of block b only change block b, and
everything before it is final by then, so a packed sequence — the prompt and final answer, then one
copy of the current block per step — scores many steps in one forward, with the same numbers as one
forward per state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rollouts.block_packing import Pack, pack, pack_batch
from rollouts.policy import DiffusionPolicy
from rollouts.decoding import (DecodingConfig, distribution_from_logits, left_pad, resolve_confidence,
                               step_distribution)
from rollouts.selection import plackett_luce_terms
from rollouts.trajectory import Trajectory


@dataclass
class Replayed:
    """Per trajectory: log-probs of its commit events (in event order) and of each step's selection."""

    token_logp: list[torch.Tensor]  # [i]: (commits of trajectory i,)
    selection_logp: list[torch.Tensor]  # [i]: (steps of trajectory i,) zeros when selection is deterministic
    forward_passes: int  # batched forwards spent (each = 1 + latent_steps model calls)
    token_entropy: list[torch.Tensor] | None = None  # [i]: entropy (nats, detached) at each commit
    # [i]: each commit's Plackett–Luce factor (0 if the selection is deterministic), as in Trajectory
    event_selection_logp: list[torch.Tensor] | None = None
    forward_tokens: int = 0  # sequence positions the forwards computed (padding included): the cost

    def step_logp(self, trajectories: list[Trajectory]) -> list[torch.Tensor]:
        """Per trajectory, per step: log-prob of the whole step (its tokens + its selection)."""
        out = []
        for traj, tokens, selection in zip(trajectories, self.token_logp, self.selection_logp):
            steps = torch.as_tensor(traj.event_step[traj.commits], dtype=torch.long, device=tokens.device)
            out.append(selection + torch.zeros_like(selection).index_add(0, steps, tokens))
        return out


@dataclass
class _Item:
    """One replayed state: trajectory i at step `first`, scoring steps first .. first+s-1."""

    trajectory: int
    first: int
    steps: range


def replay(policy: DiffusionPolicy, trajectories: list[Trajectory], cfg: DecodingConfig,
           merge_steps: int = 1, micro_batch: int = 256, packed: bool = True) -> Replayed:
    """Log-probs of every committed token (and stochastic selection) under the policy's current weights.
    `packed`: a block-diffusion model's trajectories in one forward each (False: one row per state)."""
    if merge_steps < 1:
        raise ValueError(f"merge_steps must be >= 1, got {merge_steps}")
    device = policy.device
    measure = resolve_confidence(policy, cfg)
    if cfg.stochastic_selection and measure == "chosen_prob":
        raise ValueError("replay: a stochastic selection over chosen_prob cannot be replayed")
    if packed and policy.attention_block and merge_steps == 1 and cfg.latent_steps == 0:
        return _packed_replay(policy, trajectories, cfg, measure, micro_batch)
    states = [traj.states() for traj in trajectories]
    bounds = [traj.step_bounds() for traj in trajectories]
    items = [_Item(i, t, range(t, min(t + merge_steps, traj.num_steps)))
             for i, traj in enumerate(trajectories) for t in range(0, traj.num_steps, merge_steps)]
    shared = _shared_states(trajectories, items) if merge_steps == 1 else [[it] for it in items]
    token_parts: list[dict[int, torch.Tensor]] = [{} for _ in trajectories]  # step -> its part
    entropy_parts: list[dict[int, torch.Tensor]] = [{} for _ in trajectories]
    event_selection_parts: list[dict[int, torch.Tensor]] = [{} for _ in trajectories]
    selection_parts: list[dict[int, torch.Tensor]] = [{} for _ in trajectories]
    forwards = tokens_fed = 0
    for lo in range(0, len(shared), micro_batch):
        chunk = shared[lo:lo + micro_batch]  # one forward row per distinct state; its items score from it
        first = [same[0] for same in chunk]
        prompt_ids, prompt_mask = left_pad([trajectories[it.trajectory].prompt_ids for it in first], policy.ids.pad)
        answer = torch.as_tensor(np.stack([_scoring_canvas(trajectories[it.trajectory], states[it.trajectory],
                                                           bounds[it.trajectory], it.steps) for it in first]))
        step = step_distribution(policy, prompt_ids.to(device), prompt_mask.to(device), answer.to(device), cfg, measure)
        logp = step.logp
        forwards += 1
        tokens_fed += prompt_ids.numel() + answer.numel()
        scores = step.selection_scores(step.confidence()) if cfg.stochastic_selection else None
        for row, item in ((row, item) for row, same in enumerate(chunk) for item in same):
            traj = trajectories[item.trajectory]
            events = slice(bounds[item.trajectory][item.steps.start], bounds[item.trajectory][item.steps.stop])
            commit = traj.event_token[events] != traj.mask_id
            positions = torch.as_tensor(traj.event_position[events][commit], dtype=torch.long, device=device)
            tokens = torch.as_tensor(traj.event_token[events][commit], dtype=torch.long, device=device)
            t = item.steps.start
            token_parts[item.trajectory][t] = logp[row, positions, tokens]
            at = logp[row, positions].detach()
            entropy_parts[item.trajectory][t] = -(at.exp() * at).sum(-1)
            if scores is None:
                selection_parts[item.trajectory][t] = logp.new_zeros(len(item.steps))
                event_selection_parts[item.trajectory][t] = logp.new_zeros(len(positions))
            else:
                per_step, per_event = _selection_logp(traj, states[item.trajectory], bounds[item.trajectory],
                                                      item.steps, scores[row], device)
                selection_parts[item.trajectory][t] = per_step
                event_selection_parts[item.trajectory][t] = per_event

    def cat(parts: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.cat([parts[t] for t in sorted(parts)]) if parts else torch.zeros(0, device=device)

    return Replayed(token_logp=[cat(p) for p in token_parts], selection_logp=[cat(p) for p in selection_parts],
                    forward_passes=forwards, token_entropy=[cat(p) for p in entropy_parts],
                    event_selection_logp=[cat(p) for p in event_selection_parts], forward_tokens=tokens_fed)


def _shared_states(trajectories: list[Trajectory], items: list[_Item]) -> list[list[_Item]]:
    """The items grouped by the state they score from, which is forwarded once for all of them: the
    same prompt and pins, and the same sampler (owner) for every earlier step — the shared steps of
    a branching tree's leaves, and the fully masked first canvas of a prompt's unpinned answers."""
    groups: dict[tuple, list[_Item]] = {}
    owners = [traj.owners() for traj in trajectories]
    for item in items:
        traj = trajectories[item.trajectory]
        key = (tuple(traj.prompt_ids), traj.pinned_position.tobytes(), traj.pinned_token.tobytes(),
               owners[item.trajectory][:item.steps.start].tobytes(), item.steps.start)
        groups.setdefault(key, []).append(item)
    return list(groups.values())


def _scoring_canvas(traj: Trajectory, states: np.ndarray, bounds: np.ndarray, steps: range) -> np.ndarray:
    """The canvas the steps of one window are scored from: the window's first state with every
    position committed inside the window masked (for one step this is exactly that step's state)."""
    canvas = states[steps.start].copy()
    events = slice(bounds[steps.start], bounds[steps.stop])
    committed = traj.event_position[events][traj.event_token[events] != traj.mask_id]
    canvas[committed] = traj.mask_id
    return canvas


def _selection_logp(traj: Trajectory, states: np.ndarray, bounds: np.ndarray, steps: range, scores: torch.Tensor,
                    device) -> tuple[torch.Tensor, torch.Tensor]:
    """Plackett–Luce log-prob of each step's ordered position choice, scored by `scores` (L,):
    (per step (S,), per commit in event order).

    The candidates at step t are the [MASK] positions of its block in state t that were
    not re-masked at t itself — exactly the set the sampler drew from.
    """
    candidates, orders, counts = [], [], []
    for t in steps:
        events = slice(bounds[t], bounds[t + 1])
        picked = traj.event_position[events][traj.event_token[events] != traj.mask_id]
        block = traj.block_of(picked[0]) if len(picked) else 0
        in_block = traj.block_of(np.arange(traj.gen_length)) == block
        candidate = (states[t] == traj.mask_id) & in_block
        candidates.append(candidate)
        orders.append(picked)
        counts.append(len(picked))
    width = max(max(counts), 1)
    order = np.zeros((len(counts), width), np.int64)
    for i, picked in enumerate(orders):
        order[i, :len(picked)] = picked
    terms = plackett_luce_terms(
        scores.unsqueeze(0).expand(len(counts), -1),
        torch.as_tensor(np.stack(candidates), device=device),
        torch.as_tensor(order, device=device),
        torch.as_tensor(counts, device=device),
    )
    per_event = torch.cat([terms[i, :n] for i, n in enumerate(counts)])
    return terms.sum(1), per_event


# --- block-diffusion models: the steps of a trajectory in few packed forwards ----------------------------

def _pack_steps(traj: Trajectory, states: np.ndarray, bounds: np.ndarray, steps: range, width: int) -> Pack:
    """The clean canvas (prompt + final answer), then one copy of the current block per step of `steps`."""
    copies = [(int(traj.block_of(traj.event_position[bounds[t]])), states[t]) for t in steps]
    return pack(traj.prompt_ids, traj.final_tokens, copies, width, traj.block_offset)


def _packed_replay(policy: DiffusionPolicy, trajectories: list[Trajectory], cfg: DecodingConfig, measure: str,
                   micro_batch: int) -> Replayed:
    """Replay for block-diffusion models. A packed sequence holds at most as many copy tokens as the
    canvas has (attention is dense, so its cost grows with the square of the length: at block 32 one
    sequence of all 256 steps would be 8.6k positions); a forward holds at most `micro_batch` copies."""
    if policy.shift_logits:
        raise ValueError("replay: block-wise packing assumes a model whose position i predicts token i")
    device, width = policy.device, policy.attention_block
    states = [traj.states() for traj in trajectories]  # each trajectory's canvases, rebuilt once
    bounds = [traj.step_bounds() for traj in trajectories]
    items: list[tuple[int, range]] = []
    for i, traj in enumerate(trajectories):
        per_pack = max(1, (len(traj.prompt_ids) + traj.gen_length) // width)
        items += [(i, range(t, min(t + per_pack, traj.num_steps))) for t in range(0, traj.num_steps, per_pack)]
    chunks: list[list[tuple[int, range]]] = [[]]
    for item in items:  # at least one pack per forward
        if chunks[-1] and sum(len(s) for _, s in chunks[-1]) + len(item[1]) > micro_batch:
            chunks.append([])
        chunks[-1].append(item)
    parts = {name: [[] for _ in trajectories] for name in ("token", "entropy", "selection", "event_selection")}
    out = Replayed([], [], 0)
    for chunk in chunks:
        packs = [_pack_steps(trajectories[i], states[i], bounds[i], steps, width) for i, steps in chunk]
        ids, allowed, positions = pack_batch(packs, width, policy.ids.pad)
        logits = policy.model(input_ids=ids.to(device), attention_mask=allowed.to(device),
                              position_ids=positions.to(device)).logits
        out.forward_passes += 1
        out.forward_tokens += ids.numel()
        for row, ((i, steps), packed) in enumerate(zip(chunk, packs)):
            traj = trajectories[i]
            shift = ids.shape[1] - len(packed.ids)  # left padding of this row
            events = np.arange(bounds[i][steps.start], bounds[i][steps.stop])
            events = events[traj.event_token[events] != traj.mask_id]  # the commits of these steps
            copy = traj.event_step[events] - steps.start
            where = torch.as_tensor(shift + packed.answer_start[copy] + traj.event_position[events], device=device)
            step = distribution_from_logits(policy, logits[row, where], cfg, measure)
            tokens = torch.as_tensor(traj.event_token[events], device=device)
            parts["token"][i].append(step.logp.gather(-1, tokens[:, None]).squeeze(-1))
            at = step.logp.detach()
            parts["entropy"][i].append(-(at.exp() * at).sum(-1))
            if not cfg.stochastic_selection:
                parts["selection"][i].append(step.logp.new_zeros(len(steps)))
                parts["event_selection"][i].append(step.logp.new_zeros(len(events)))
                continue
            answer = torch.arange(traj.gen_length)
            for t in steps:  # the step's scores at every answer position (only its block's count)
                rows = (shift + packed.answer_start[t - steps.start] + answer).clamp(0, ids.shape[1] - 1).to(device)
                full = distribution_from_logits(policy, logits[row, rows], cfg, measure)
                per_step, per_event = _selection_logp(traj, states[i], bounds[i], range(t, t + 1),
                                                      full.selection_scores(full.confidence()), device)
                parts["selection"][i].append(per_step)
                parts["event_selection"][i].append(per_event)

    def cat(pieces: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(pieces) if pieces else torch.zeros(0, device=device)

    out.token_logp, out.token_entropy = [cat(p) for p in parts["token"]], [cat(p) for p in parts["entropy"]]
    out.selection_logp = [cat(p) for p in parts["selection"]]
    out.event_selection_logp = [cat(p) for p in parts["event_selection"]]
    return out
