"""Score a batch with several reward functions: weighted sum, per-function metrics, fault handling.

Built-in verifiers that are bounded by construction run in this process. Every other
function (user code, math-verify, the code sandbox driver) runs in a process pool,
all concurrently, under `timeout_s`. A function that raises, hangs, returns the wrong
number of values or a non-number is reported by name with the first bad sample and
handled per `on_error`:
  zero  (default) its scores for the batch become 0.0, counted in rewards/<name>/errors
  skip  its scores become None (no opinion) for the affected samples
  raise the run stops with a RewardError naming the function
A hang kills the pool (the hung process with it); the next batch gets a fresh one.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import multiprocessing
import threading
import time
from dataclasses import dataclass, field

from rewards.registry import RewardsConfig, get, runs_in_process

log = logging.getLogger(__name__)


class RewardError(RuntimeError):
    """A reward function failed and `rewards.on_error` is `raise`."""


@dataclass
class RewardBatch:
    """Scores of one batch of completions."""

    total: list[float]  # weighted sum over functions (None scores left out)
    per_function: dict[str, list[float | None]]
    metrics: dict[str, float]  # reward, reward_std, rewards/<name>/{mean,std,errors}, timing_s/reward
    errors: list[str] = field(default_factory=list)  # one message per failed function


def call_reward(fn, prompts, completions, completion_ids, columns: dict) -> list:
    """Call a TRL-signature reward function (sync or async)."""
    result = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return list(result) if isinstance(result, (list, tuple)) else result


async def _await(awaitable):
    return await awaitable


# --- the reward pool's processes --------------------------------------------------------

_CHILD_FUNCTIONS: dict[int, object] = {}


def _init_child(payloads: dict[int, bytes]) -> None:
    """Runs once per pool process: one thread, then import every pooled reward function."""
    import os

    import cloudpickle

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    for index, payload in payloads.items():
        _CHILD_FUNCTIONS[index] = cloudpickle.loads(payload)


def _warm_up(_: int) -> bool:
    time.sleep(0.05)  # long enough that every process takes one of these tasks
    return True


def _call_in_child(index: int, prompts, completions, completion_ids, columns):
    return call_reward(_CHILD_FUNCTIONS[index], prompts, completions, completion_ids, columns)


def check_scores(label: str, values, n: int) -> list[float | None]:
    """Scores must be a list of n floats or None; the error names the function and first bad sample."""
    if not isinstance(values, list):
        raise TypeError(f"reward '{label}' returned {type(values).__name__}; expected a list of {n} floats or None")
    if len(values) != n:
        raise ValueError(f"reward '{label}' returned {len(values)} values for {n} completions")
    out = []
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        number = None if isinstance(value, (str, bytes)) else _as_float(value)
        if number is None:
            raise ValueError(f"reward '{label}' returned {repr(value)[:80]} ({type(value).__name__}) for sample {i}; "
                             f"expected a finite float or None")
        if not math.isfinite(number):  # a number, but no score: a failure on this batch, handled per on_error
            raise ValueError(f"reward '{label}' returned a non-finite score {value!r} for sample {i}; "
                             f"expected a finite float or None")
        out.append(number)
    return out


def _as_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


class RewardRunner:
    """The configured reward functions, ready to score batches. Call `close()` when done."""

    STARTUP_TIMEOUT_S = 300.0  # starting the pool and importing the functions (not counted in timeout_s)

    def __init__(self, cfg: RewardsConfig):
        if not cfg.functions:
            raise ValueError("reward setting 'functions': no reward functions are listed")
        if cfg.on_error not in ("zero", "skip", "raise"):
            raise ValueError(f"reward setting 'on_error': expected zero, skip or raise, got {cfg.on_error!r}")
        self.cfg = cfg
        self.specs = cfg.functions
        self.fns = []
        for i, spec in enumerate(self.specs):
            try:
                self.fns.append(get(spec.reference, spec.args))
            except KeyError as exc:
                raise ValueError(f"reward setting 'functions[{i}]': {exc.args[0]}") from None
        labels = [s.label for s in self.specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"reward setting 'functions': two functions share a name in {labels}")
        self.pooled = [not runs_in_process(s.reference) for s in self.specs]
        self._pool = None
        self._pool_lock = threading.Lock()  # the asynchronous producer and the trainer may both score

    def _get_pool(self):
        """The process pool, started (and every function imported in it) before any timed call."""
        with self._pool_lock:
            return self._start_pool()

    def _start_pool(self):
        if self._pool is None:
            import cloudpickle

            payloads = {i: cloudpickle.dumps(fn) for i, fn in enumerate(self.fns) if self.pooled[i]}
            processes = max(self.cfg.workers, sum(self.pooled))
            ctx = multiprocessing.get_context("forkserver")
            self._pool = ctx.Pool(processes=processes, initializer=_init_child, initargs=(payloads,))
            try:
                self._pool.map_async(_warm_up, range(processes), chunksize=1).get(timeout=self.STARTUP_TIMEOUT_S)
            except Exception:
                self.close()
                raise
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, prompts: list, completions: list, completion_ids: list | None = None,
                 trajectories: list | None = None, **columns) -> RewardBatch:
        """Score a batch. `trajectories` (the answers' rollouts.Trajectory) reach the functions that
        declare a `trajectories` parameter, the way TRL passes `completion_ids`."""
        start = time.perf_counter()
        n = len(completions)
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column '{name}' has {len(values)} values for {n} completions")
        raw: dict[int, object] = {}
        failures: dict[int, str] = {}
        pending = {}
        for i, (spec, fn) in enumerate(zip(self.specs, self.fns)):
            self._check_columns(spec.label, fn, columns)
            own = {**columns, "trajectories": trajectories} if reads_trajectories(fn) else columns
            chat = spec.conversational or bool(prompts and isinstance(prompts[0], list))  # TRL: chat in, chat out
            shown = [[{"role": "assistant", "content": c}] for c in completions] if chat else completions
            if self.pooled[i]:
                pending[i] = self._get_pool().apply_async(_call_in_child, (i, prompts, shown, completion_ids, own))
            else:
                try:
                    raw[i] = call_reward(fn, prompts, shown, completion_ids, own)
                except Exception as exc:  # noqa: BLE001 — any failure of user code is reported, not fatal
                    failures[i] = f"reward '{spec.label}' raised {type(exc).__name__}: {exc}"
        deadline = time.monotonic() + self.cfg.timeout_s
        hung = False
        for i, handle in pending.items():
            try:
                raw[i] = handle.get(timeout=max(deadline - time.monotonic(), 0.0))
            except multiprocessing.TimeoutError:
                failures[i] = f"reward '{self.specs[i].label}' timed out after {self.cfg.timeout_s:g} s"
                hung = True
            except Exception as exc:  # noqa: BLE001
                failures[i] = f"reward '{self.specs[i].label}' raised {type(exc).__name__}: {exc}"
        if hung:
            self.close()  # kills the hung process; a fresh pool starts with the next batch

        per_function, errors, metrics = {}, [], {}
        for i, spec in enumerate(self.specs):
            scores, bad = None, 0
            if i not in failures:
                try:
                    scores = check_scores(spec.label, raw[i], n)
                except (TypeError, ValueError) as exc:
                    failures[i] = str(exc)
            if i in failures:
                message = failures[i]
                if self.cfg.on_error == "raise":
                    raise RewardError(message)
                log.warning("%s; scoring its %d samples as %s", message, n,
                            "0" if self.cfg.on_error == "zero" else "None")
                errors.append(message)
                scores = [0.0 if self.cfg.on_error == "zero" else None] * n
                bad = n
            per_function[spec.label] = scores
            metrics[f"rewards/{spec.label}/errors"] = float(bad)
            seen = [s for s in scores if s is not None]
            if seen:
                mean = sum(seen) / len(seen)
                metrics[f"rewards/{spec.label}/mean"] = mean
                metrics[f"rewards/{spec.label}/std"] = _std(seen, mean)
        total = [sum(spec.weight * per_function[spec.label][j] for spec in self.specs
                     if per_function[spec.label][j] is not None) for j in range(n)]
        metrics["reward"] = sum(total) / max(n, 1)
        metrics["reward_std"] = _std(total, metrics["reward"])
        metrics["timing_s/reward"] = time.perf_counter() - start
        return RewardBatch(total=total, per_function=per_function, metrics=metrics, errors=errors)

    @staticmethod
    def _check_columns(label: str, fn, columns: dict) -> None:
        """A function's required parameters must be columns of the batch (a setup error, always raised)."""
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return
        provided = {"prompts", "completions", "completion_ids", "trajectories", *columns}
        missing = [p.name for p in params if p.default is inspect.Parameter.empty
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in provided]
        if missing:
            raise ValueError(f"reward '{label}' needs column(s) {missing}; the data has columns {sorted(columns)}")


def reads_trajectories(fn) -> bool:
    """Whether a reward function declares a `trajectories` parameter (it is then passed the answers'
    trajectories; a function taking only **kwargs is not, as TRL's are not)."""
    try:
        return "trajectories" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _std(values: list[float], mean: float) -> float:
    return (sum((v - mean) ** 2 for v in values) / max(len(values), 1)) ** 0.5
