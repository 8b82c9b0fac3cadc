"""The built-in reward functions, in TRL's signature, registered by name.

Each reads the dataset columns it needs from keyword lists and delegates to a checker
in `rewards.verifiers` — the same checkers evaluation uses, so reward and accuracy agree.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from rewards.verifiers import (
    addition_correct,
    code_pass_rate,
    countdown_correct,
    format_score,
    gsm8k_correct,
    math_correct,
    sudoku4_cell_accuracy,
    sudoku4_solved,
    temporal_self_consistency,
)

BUILTINS: list[tuple[str, Callable, bool]] = []  # (name, function, safe to run in-process); rewards/registry.py
                                                  # registers them (this module imports nothing of it: no cycle)


def register(name: str, *, in_process: bool = False) -> Callable[[Callable], Callable]:
    """Collect a built-in verifier under `name`."""

    def decorator(fn: Callable) -> Callable:
        BUILTINS.append((name, fn, in_process))
        return fn

    return decorator


def _text(completion) -> str:
    """A completion as text: TRL passes plain strings or chat messages [{"content": ...}]."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


@register("sudoku4", in_process=True)
def sudoku4(prompts, completions, puzzle, **kwargs) -> list[float]:
    """1.0 for a valid grid that keeps every given (any valid completion counts)."""
    return [float(sudoku4_solved(_text(c), p)) for c, p in zip(completions, puzzle)]


@register("sudoku4_cells", in_process=True)
def sudoku4_cells(prompts, completions, puzzle, solution, **kwargs) -> list[float]:
    """Partial credit: the fraction of blank cells filled correctly (1.0 for any valid solution)."""
    return [sudoku4_cell_accuracy(_text(c), p, s) for c, p, s in zip(completions, puzzle, solution)]


@register("countdown", in_process=True)
def countdown(prompts, completions, numbers, target, **kwargs) -> list[float]:
    """1.0 for an equation that uses each number once and hits the target (AST whitelist, no eval)."""
    return [float(countdown_correct(_text(c), n, t)) for c, n, t in zip(completions, numbers, target)]


@register("addition", in_process=True)
def addition(prompts, completions, answer, **kwargs) -> list[float]:
    return [float(addition_correct(_text(c), a)) for c, a in zip(completions, answer)]


@register("gsm8k", in_process=True)
def gsm8k(prompts, completions, answer, **kwargs) -> list[float]:
    """The final number (<answer>, \\boxed{} or the last number) equals the reference."""
    return [float(gsm8k_correct(_text(c), a)) for c, a in zip(completions, answer)]


@register("math")
def math_answer(prompts, completions, answer, **kwargs) -> list[float]:
    """math-verify equivalence on \\boxed{} (sympy can be slow: runs in the reward pool)."""
    return [float(math_correct(_text(c), a)) for c, a in zip(completions, answer)]


@register("format", in_process=True)
def answer_format(prompts, completions, **kwargs) -> list[float]:
    """1.0 for well-formed [<think>…</think>]<answer>…</answer> with nothing after it; 0.5 with trailing text."""
    return [format_score(_text(c)) for c in completions]


CODE_POOL = 64  # answers judged at once: their sandboxes mostly wait, and each has its own CPU limit


@register("code")
def code(prompts, completions, tests, entry_point=None, **kwargs) -> list[float]:
    """Pass rate of the row's tests against the completion's Python, run in the sandbox. Every
    answer has its own time limit (SandboxLimits.wall_s): up to CODE_POOL answers are judged at
    once, so a slow answer never costs another one its score, and a batch takes at most
    wall_s × ⌈n / CODE_POOL⌉. `entry_point` (HumanEval's column): the function the task names."""
    names = entry_point or [None] * len(completions)
    jobs = list(zip(completions, tests, names))
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), CODE_POOL))) as pool:
        return list(pool.map(lambda job: code_pass_rate(_text(job[0]), job[1], entry_points=[job[2]] if job[2] else None),
                             jobs))


@register("temporal_consistency", in_process=True)
def temporal_consistency(prompts, completions, trajectories=None, **kwargs) -> list[float | None]:
    """TCR's temporal self-consistency (arXiv 2508.09138) as a reward in [0, 1]: 1 − TSE / log S, TSE
    the entropy of how the S per-step one-forward completions ŷ_s cluster (identical answers, up to
    the first stop token, form one cluster). 1 = every step already predicted the final answer.
    Reads `Trajectory.step_prediction` (rollout.record_predictions: true); no opinion (None) for an
    answer without it, as in the preflight call on reference answers, which have no trajectory."""
    if trajectories is None:
        return [None] * len(completions)
    return [temporal_self_consistency(t.step_prediction) if t.step_prediction is not None else None
            for t in trajectories]


temporal_consistency.needs_step_predictions = True  # the preflight asks for rollout.record_predictions
