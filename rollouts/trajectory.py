"""The exact path one answer took through the denoising process, stored compactly.

A trajectory is a list of events `(step, position, token)` — a commit writes a token,
a revision writes [MASK] — plus the behaviour log-prob of every committed token and of
each step's position selection. Storage is O(events): canvases are rebuilt on demand
by `state_at(t)`, never stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


EXACT_CACHES = ("none", "block")  # caches whose log-probs are the policy's own (rollouts/kv_cache.py)


@dataclass
class Trajectory:
    """One sampled answer. Positions index the answer canvas (0 .. gen_length-1)."""

    prompt_ids: list[int]
    gen_length: int
    block_length: int
    mask_id: int
    event_step: np.ndarray  # (E,) int32, non-decreasing
    event_position: np.ndarray  # (E,) int32
    event_token: np.ndarray  # (E,) int64; mask_id for a revision (re-mask)
    event_logp: np.ndarray  # (E,) float32 behaviour log-prob of the committed token; nan for revisions
    selection_logp: np.ndarray  # (T,) float32 log-prob of each step's position choice (0 if deterministic)
    final_tokens: np.ndarray  # (gen_length,) the answer, [EOS]-filled after an early stop
    forward_passes: int
    # (E,) float32 each commit's Plackett–Luce factor (its pick given the earlier picks of the step;
    # 0 when the choice is deterministic, nan for revisions); summed per step = selection_logp
    event_selection_logp: np.ndarray | None = None
    pinned_position: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    pinned_token: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    seed: int = 0
    policy_version: int = 0
    prompt_index: int = 0  # which prompt of the request (for grouping)
    sample_index: int = 0  # which of the G samples of that prompt
    cache: str = "none"  # the sampler's KV cache: none / block = event_logp is the exact policy; else approximate
    forward_tokens: int = 0  # canvas tokens the sampler's forwards computed (the cost a cache cuts)
    hinted: bool = False  # its pinned tokens are hints from a reference answer (rollout.hints, IGPO)
    # block-diffusion models: prompt tokens in the answer's first attention block (the prompt's last
    # partial block), so answer position p is in block (p + block_offset) // block_length
    block_offset: int = 0
    # (T,) int32 the decoding block each step worked on (lets a branch resume the block schedule mid-path)
    step_block: np.ndarray | None = None
    # (E,) float32 entropy (nats) of the sampler's distribution at each event's position (branch points by
    # entropy, EGSPO-SA's rule); nan for revisions
    event_entropy: np.ndarray | None = None
    # (T, L) int64, only with rollout.record_predictions: each step's one-forward completion ŷ_t (every
    # [MASK] filled with the argmax, committed tokens kept, [EOS] after the first stop token)
    step_prediction: np.ndarray | None = None
    # a branch (rollout.branching): whose recorded events it shares, run-length encoded. The sample
    # seeded branch_seeds[i] drew the steps before branch_steps[i] (from branch_steps[i-1], or 0);
    # this one draws from branch_steps[-1] on. Both empty for a root (an independent sample).
    branch_seeds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    branch_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    @property
    def branch_step(self) -> int:
        """The first step this trajectory drew itself (0 for a root)."""
        return int(self.branch_steps[-1]) if len(self.branch_steps) else 0

    def owners(self) -> np.ndarray:
        """(T,) int64: the seed of the sample that drew each step's events. Two trajectories share
        the canvas entering step s exactly when their owners agree on every step before s."""
        out = np.full(self.num_steps, self.seed, dtype=np.int64)
        bounds = list(self.branch_steps) + [self.num_steps]
        for seed, lo, hi in zip(self.branch_seeds, [0] + bounds[:-2], bounds[:-1]):
            out[lo:hi] = seed
        return out

    def lineage_until(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(branch_seeds, branch_steps) of a branch that takes this trajectory's events before `step`."""
        if step <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        owners = self.owners()[:step]
        change = np.flatnonzero(np.diff(owners)) + 1
        starts = np.concatenate([[0], change]).astype(np.int32)
        return owners[starts].astype(np.int64), np.concatenate([starts[1:], [step]]).astype(np.int32)

    @property
    def exact_behaviour(self) -> bool:
        """event_logp is the policy's own log-prob (no approximate KV cache was used)."""
        return self.cache in EXACT_CACHES

    def block_of(self, positions: np.ndarray) -> np.ndarray:
        """The decoding block of answer positions."""
        return (np.asarray(positions) + self.block_offset) // self.block_length

    def __post_init__(self) -> None:
        if self.event_selection_logp is None:  # written before per-commit factors were recorded
            self.event_selection_logp = np.where(self.event_token == self.mask_id, np.nan, 0.0).astype(np.float32)

    @property
    def num_steps(self) -> int:
        return len(self.selection_logp)

    @property
    def commits(self) -> np.ndarray:
        """Boolean (E,): which events commit a token (the others are revisions)."""
        return self.event_token != self.mask_id

    @property
    def num_remasks(self) -> int:
        return int((~self.commits).sum())

    def step_bounds(self) -> np.ndarray:
        """(T+1,): the events of step t are event_*[bounds[t]:bounds[t+1]] (events are in time order)."""
        return np.searchsorted(self.event_step, np.arange(self.num_steps + 1), side="left")

    def initial_state(self) -> np.ndarray:
        canvas = np.full(self.gen_length, self.mask_id, dtype=np.int64)
        canvas[self.pinned_position] = self.pinned_token
        return canvas

    def state_at(self, step: int) -> np.ndarray:
        """The answer canvas the model saw at `step` (before that step's events);
        `state_at(num_steps)` is the last canvas, before any [EOS] fill."""
        canvas = self.initial_state()
        upto = np.searchsorted(self.event_step, step, side="left")
        _apply(canvas, self.event_position[:upto], self.event_token[:upto])
        return canvas

    def states(self) -> np.ndarray:
        """All visited canvases (T+1, gen_length), built in one pass (for replay)."""
        out = np.empty((self.num_steps + 1, self.gen_length), dtype=np.int64)
        canvas = self.initial_state()
        bounds = self.step_bounds()
        for t in range(self.num_steps + 1):
            if t:
                lo, hi = bounds[t - 1], bounds[t]
                _apply(canvas, self.event_position[lo:hi], self.event_token[lo:hi])
            out[t] = canvas
        return out

    def to_json(self) -> dict:
        out = {}
        for name, value in self.__dict__.items():
            out[name] = value.tolist() if isinstance(value, np.ndarray) else value
        for name in ("event_logp", "event_selection_logp", "event_entropy"):
            if getattr(self, name) is not None:
                out[name] = [None if np.isnan(v) else v for v in getattr(self, name).tolist()]
        return out

    @classmethod
    def from_json(cls, row: dict) -> "Trajectory":
        dtypes = {"event_step": np.int32, "event_position": np.int32, "event_token": np.int64,
                  "event_logp": np.float32, "selection_logp": np.float32, "final_tokens": np.int64,
                  "pinned_position": np.int32, "pinned_token": np.int64, "event_selection_logp": np.float32,
                  "step_block": np.int32, "event_entropy": np.float32, "step_prediction": np.int64,
                  "branch_seeds": np.int64, "branch_steps": np.int32}
        row = dict(row)
        for name in ("event_logp", "event_selection_logp", "event_entropy"):
            if row.get(name) is not None:
                row[name] = [np.nan if v is None else v for v in row[name]]
        for name, dtype in dtypes.items():
            if row.get(name) is not None:
                row[name] = np.asarray(row[name], dtype=dtype)
        return cls(**row)


def _apply(canvas: np.ndarray, positions: np.ndarray, tokens: np.ndarray) -> None:
    """Write events in time order: where a position is written twice, the later write wins."""
    positions, last = np.unique(positions[::-1], return_index=True)
    canvas[positions] = tokens[::-1][last]


def save_jsonl(trajectories: list[Trajectory], path: str) -> None:
    with open(path, "w") as fh:
        for trajectory in trajectories:
            fh.write(json.dumps(trajectory.to_json()) + "\n")


def load_jsonl(path: str) -> list[Trajectory]:
    with open(path) as fh:
        return [Trajectory.from_json(json.loads(line)) for line in fh if line.strip()]
