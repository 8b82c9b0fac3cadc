"""Where each RL step's rollouts come from: sampled when the trainer asks (synchronous), or by a
producer thread that runs ahead of the trainer by at most `max_staleness` steps (asynchronous,
`rollout.async`).

The trainer loop is the same for both (reasoning/rl.py): `get(step)` the step's rollouts, train,
`publish(weights, version)`, `step_done(step)`. What differs is only when sampling happens:

  synchronous   get(k) samples now, with the weights published after step k-1.
  asynchronous  a producer thread samples batch k as soon as the trainer has finished step
                k-1-max_staleness, after handing the workers the newest published weights —
                so generation of step k+1 overlaps the update of step k, and a weight sync
                never waits for an update (it is done by the producer, between two batches).
                With max_staleness 0 it waits for every update: the synchronous run, exactly.

Every trajectory carries the `policy_version` of the worker that sampled it; the trainer, not
this module, decides what is too stale to train (reasoning/rl.py `drop_stale`).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from rollouts import Trajectory
from rollouts.seeding import DATA, derive_seed


@dataclass
class PromptSchedule:
    """Which training prompts step k uses: positions (k-1)·P … k·P-1 of a sequence of seeded
    permutations of the train split, epoch after epoch. A function of the step alone, so a
    producer running ahead, a resumed run and an uninterrupted one all take the same prompts."""

    size: int
    per_step: int
    seed: int
    _orders: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, DATA))
            self._orders = {epoch: torch.randperm(self.size, generator=generator).tolist()}
        return self._orders[epoch]

    def indices(self, step: int) -> list[int]:
        start = (step - 1) * self.per_step
        return [self.order(p // self.size)[p % self.size] for p in range(start, start + self.per_step)]

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, cursor) after step `step` (recorded in metrics and checkpoints)."""
        return divmod(step * self.per_step, self.size)


@dataclass
class Rollouts:
    """One step's sampled groups: the train-split indices of its prompts, and G trajectories per
    prompt ordered (prompt 0: samples 0..G-1, prompt 1: ...)."""

    indices: list[int]
    trajectories: list[Trajectory]
    sampled: tuple[float, float]  # (start, end) of the sampling, seconds on the run's clock
    synced: tuple[float, float] | None = None  # the weight sync the producer did just before (async)

    def share(self, rank: int, world: int) -> "Rollouts":
        """The groups rank `rank` of `world` trains: every world-th prompt."""
        if world == 1:
            return self
        return dataclasses.replace(self, indices=self.indices[rank::world],
                                   trajectories=[t for t in self.trajectories if t.prompt_index % world == rank])


class SyncRollouts:
    """Sample when asked; sync weights when published (the trainer waits for both)."""

    def __init__(self, sample: Callable[[int], Rollouts], sync: Callable[[dict, int], object],
                 clock: Callable[[], float]):
        self._sample, self._sync, self._clock = sample, sync, clock

    def get(self, step: int) -> Rollouts:
        return self._sample(step)

    def publish(self, weights: dict, version: int) -> tuple[float, float]:
        """Ship the weights now; returns the (start, end) of the sync the trainer waited for."""
        start = self._clock()
        self._sync(weights, version)
        return start, self._clock()

    def step_done(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class AsyncRollouts:
    """A producer thread samples batches first_step … last_step in order, at most
    `max_staleness` steps ahead of the trainer, syncing the newest published weights before each."""

    def __init__(self, sample: Callable[[int], Rollouts], sync: Callable[[dict, int], object],
                 max_staleness: int, first_step: int, last_step: int, clock: Callable[[], float]):
        self._sample, self._sync, self._clock = sample, sync, clock
        self.max_staleness = max_staleness
        self._cond = threading.Condition()
        self._done = first_step - 1  # the last step the trainer finished
        self._pending: tuple[dict, int] | None = None  # weights published, not yet shipped
        self._ready: dict[int, Rollouts] = {}
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._produce, args=(first_step, last_step),
                                        name="dlmrl-rollouts", daemon=True)
        self._thread.start()

    def _produce(self, first_step: int, last_step: int) -> None:
        try:
            for step in range(first_step, last_step + 1):
                with self._cond:
                    self._cond.wait_for(lambda: self._stop or self._done >= step - 1 - self.max_staleness)
                    if self._stop:
                        return
                    pending, self._pending = self._pending, None
                    synced = None
                if pending is not None:
                    start = self._clock()
                    self._sync(*pending)
                    synced = (start, self._clock())
                rollouts = self._sample(step)
                rollouts.synced = synced
                with self._cond:
                    self._ready[step] = rollouts
                    self._cond.notify_all()
        except BaseException as err:  # noqa: BLE001 — handed to the trainer thread by `get`
            with self._cond:
                self._error = err
                self._cond.notify_all()

    def get(self, step: int) -> Rollouts:
        with self._cond:
            self._cond.wait_for(lambda: step in self._ready or self._error is not None)
            if step not in self._ready:
                raise RuntimeError(f"the rollout producer failed before step {step}") from self._error
            return self._ready.pop(step)

    def publish(self, weights: dict, version: int) -> None:
        """Hand new weights to the producer; it ships them before its next batch, so the trainer
        never waits for a sync (its interval is recorded in that batch's `synced`)."""
        with self._cond:
            self._pending = (weights, version)

    def step_done(self, step: int) -> None:
        with self._cond:
            self._done = step
            self._cond.notify_all()

    def close(self, timeout_s: float = 600.0) -> None:
        """Stop after the batch in progress (its result is discarded)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

