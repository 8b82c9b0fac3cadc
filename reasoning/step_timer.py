"""Where an RL step's time goes: wall seconds per stage (`timing_s/*`) and intervals on the run's
clock (`timeline/*`, drawn by `dlmrl show`), kept out of the step's algorithm."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator


def spans(timeline: dict[str, float], **intervals: tuple[float, float] | None) -> None:
    """Record (start, end) intervals on the run's clock as timeline/<name>_start|_end."""
    for name, interval in intervals.items():
        if interval is not None:
            timeline[f"{name}_start"], timeline[f"{name}_end"] = interval


class _Stage:
    def __init__(self) -> None:
        self.excluded = 0.0

    def exclude(self, seconds: float) -> None:
        """Seconds inside the stage that belong to another (e.g. sampling inside reward collection)."""
        self.excluded += seconds


class StepTimer:
    """One step's timings: `with timer.time(name)` measures wall seconds, `with timer.span(name)`
    records an interval on the run's clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock, self.started = clock, time.perf_counter()
        self.timing: dict[str, float] = {}
        self.timeline: dict[str, float] = {}

    @contextmanager
    def time(self, name: str) -> Iterator[_Stage]:
        stage, start = _Stage(), time.perf_counter()
        yield stage
        self.timing[name] = time.perf_counter() - start - stage.excluded

    @contextmanager
    def span(self, name: str) -> Iterator[None]:
        start = self.clock()
        yield
        spans(self.timeline, **{name: (start, self.clock())})

    def rollouts(self, rollouts) -> None:
        """The sampling the step's rollouts record (possibly done earlier, by the producer)."""
        self.timing["rollout"] = rollouts.sampling[1] - rollouts.sampling[0]
        spans(self.timeline, rollout=rollouts.sampling, sync=rollouts.synced, trainer_rollout=rollouts.trainer_sampling,
              first_round=rollouts.preparing)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
