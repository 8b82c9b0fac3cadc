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
                The producer also `prepare`s each batch it finished (reasoning/rl.py: scores it
                and samples the hints of its failed groups), so that rollout work overlaps the
                update too. With max_staleness 0 it waits for every update: the synchronous run, exactly.

A batch is a list of sample jobs (rollouts/workers.py), each with its own seed, so who samples a
job does not change its draws. With in-process rollouts the producer works through a batch in
chunks, and a trainer that has finished its update and is waiting for that batch may claim the
chunks nobody has started and sample them itself, with its own newer weights
(`rollout.async.trainer_samples`): on a machine whose cores are shared by the two, neither idles.

Every trajectory carries the `policy_version` of the worker that sampled it; the trainer, not
this module, decides what is too stale to train (reasoning/rl_run.py `drop_stale`).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from rollouts import Trajectory
from reasoning.schema import setting_error
from rollouts.workers import SampleJob, WorkerPool
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
    sampling: tuple[float, float]  # (start, end) of the sampling, seconds on the run's clock
    synced: tuple[float, float] | None = None  # the weight sync the producer did just before (async)
    trainer_sampled: int = 0  # trajectories the waiting trainer sampled itself (async, trainer_samples)
    trainer_sampling: tuple[float, float] | None = None  # when it did
    prepared: object | None = None  # what the producer's `prepare` made of the batch (scored, hinted groups)
    preparing: tuple[float, float] | None = None  # when it did

    def share(self, rank: int, world: int) -> "Rollouts":
        """The groups rank `rank` of `world` trains: every world-th prompt."""
        if world == 1:
            return self
        return dataclasses.replace(self, indices=self.indices[rank::world],
                                   trajectories=[t for t in self.trajectories if t.prompt_index % world == rank])


Plan = Callable[[int], tuple[list[int], list[SampleJob]]]  # step -> (prompt indices, sample jobs)
SampleFn = Callable[[list[SampleJob]], list[Trajectory]]  # jobs -> their trajectories, in the jobs' order
Prepare = Callable[[int, list[int], list[Trajectory]], object]  # (step, indices, trajectories) -> prepared batch


class SyncRollouts:
    """Sample when asked; sync weights when published (the trainer waits for both)."""

    def __init__(self, plan: Plan, sample: SampleFn, sync: Callable[[dict, int], object], clock: Callable[[], float]):
        self._plan, self._sample, self._sync, self._clock = plan, sample, sync, clock

    def get(self, step: int) -> Rollouts:
        indices, jobs = self._plan(step)
        start = self._clock()
        return Rollouts(indices, self._sample(jobs), (start, self._clock()))

    def publish(self, weights: dict, version: int) -> tuple[float, float]:
        """Ship the weights now; returns the (start, end) of the sync the trainer waited for."""
        start = self._clock()
        self._sync(weights, version)
        return start, self._clock()

    def step_done(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _PendingStep:
    """The batch the producer is working through: its chunks, who has claimed them, results."""

    step: int
    chunks: list[list[SampleJob]]
    results: list[list[Trajectory] | None]
    claimed: int = 0  # chunks 0 .. claimed-1 are taken
    trainer_sampled: int = 0

    def complete(self) -> bool:
        return all(r is not None for r in self.results)


def split(jobs: list[SampleJob], chunks: int, align: int = 1) -> list[list[SampleJob]]:
    """`jobs` in `chunks` contiguous, near-equal parts of whole multiples of `align` jobs (each job has
    its own seed, so a group may be split between two parts, and two samplers, without changing any
    draw; with branching, align = G keeps each prompt's tree, and its budget, in one part)."""
    units = len(jobs) // align if align > 1 and len(jobs) % align == 0 else len(jobs)
    size = len(jobs) // units if units else 1
    chunks = max(1, min(chunks, units))
    bounds = [round(i * units / chunks) * size for i in range(chunks + 1)]
    return [jobs[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


class AsyncRollouts:
    """A producer thread samples batches first_step … last_step in order, at most
    `max_staleness` steps ahead of the trainer, syncing the newest published weights before each.
    With `trainer_sample` (in-process rollouts), a batch is worked through in `chunks` parts and the
    trainer, while it waits for a batch, samples unclaimed parts with `trainer_sample`."""

    def __init__(self, plan: Plan, sample: SampleFn, sync: Callable[[dict, int], object], max_staleness: int,
                 first_step: int, last_step: int, clock: Callable[[], float], trainer_sample: SampleFn | None = None,
                 chunks: int = 1, align: int = 1, prepare: Prepare | None = None):
        self._plan, self._sample, self._sync, self._clock = plan, sample, sync, clock
        self._trainer_sample, self._chunks = trainer_sample, chunks if trainer_sample else 1
        self._align, self._prepare = align, prepare
        self.max_staleness = max_staleness
        self._cond = threading.Condition()
        self._done = first_step - 1  # the last step the trainer finished
        self._pending: tuple[dict, int] | None = None  # weights published, not yet shipped
        self._batch: _PendingStep | None = None  # in progress
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
                indices, jobs = self._plan(step)
                start = self._clock()
                chunks = split(jobs, self._chunks, self._align)
                batch = _PendingStep(step, chunks, [None] * len(chunks))
                with self._cond:
                    self._batch = batch
                    self._cond.notify_all()
                while (part := self._claim(batch)) is not None:
                    self._deliver(batch, part, self._sample(chunks[part]))
                with self._cond:  # the trainer may still be sampling a part
                    self._cond.wait_for(lambda: self._stop or batch.complete())
                    if self._stop:
                        return
                    self._batch = None
                trajectories = [t for part in batch.results for t in part]  # chunks are in job order
                sampling = (start, self._clock())
                prepared = self._prepare(step, indices, trajectories) if self._prepare is not None else None
                with self._cond:
                    self._ready[step] = Rollouts(indices, trajectories, sampling, synced, batch.trainer_sampled,
                                                 prepared=prepared,
                                                 preparing=(sampling[1], self._clock()) if prepared is not None else None)
                    self._cond.notify_all()
        except BaseException as err:  # noqa: BLE001 — handed to the trainer thread by `get`
            with self._cond:
                self._error = err
                self._cond.notify_all()

    def _claim(self, batch: _PendingStep) -> int | None:
        with self._cond:
            if self._stop or batch.claimed == len(batch.chunks):
                return None
            batch.claimed += 1
            return batch.claimed - 1

    def _deliver(self, batch: _PendingStep, part: int, trajectories: list[Trajectory], by_trainer: bool = False) -> None:
        with self._cond:
            batch.results[part] = trajectories
            batch.trainer_sampled += len(trajectories) if by_trainer else 0
            self._cond.notify_all()

    def _batch_for(self, step: int) -> _PendingStep | None:
        """The producer's batch `step` once it has started it; None if it is done or failed."""
        with self._cond:
            self._cond.wait_for(lambda: (self._batch is not None and self._batch.step == step)
                                or step in self._ready or self._error is not None or self._stop)
            return self._batch if self._batch is not None and self._batch.step == step else None

    def get(self, step: int) -> Rollouts:
        helped = None
        if self._trainer_sample is not None and (batch := self._batch_for(step)) is not None:
            start = self._clock()
            while (part := self._claim(batch)) is not None:  # help instead of waiting
                self._deliver(batch, part, self._trainer_sample(batch.chunks[part]), by_trainer=True)
                helped = (start, self._clock())
        with self._cond:
            self._cond.wait_for(lambda: step in self._ready or self._error is not None)
            if step not in self._ready:
                raise RuntimeError(f"the rollout producer failed before step {step}") from self._error
            return dataclasses.replace(self._ready.pop(step), trainer_sampling=helped)

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


def start_workers(*args, **kwargs) -> WorkerPool:
    """The rollout workers; their errors about a `ray` setting name its config key."""
    try:
        return WorkerPool(*args, **kwargs)
    except (ValueError, ConnectionError, RuntimeError) as exc:
        mapped = setting_error(exc, "ray")
        if mapped is None:
            raise
        raise mapped from None
