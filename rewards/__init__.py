"""Rewards: TRL-signature reward functions, a registry, built-in verifiers and a sandbox.

    import rewards
    @rewards.register("brevity")
    def brevity(prompts, completions, **kwargs): return [1.0 / (1 + len(c)) for c in completions]
    fn = rewards.get("countdown")            # or "pkg.mod:func" / "path/to/file.py:func"

The built-in verifiers are the single scorer for a task: the training reward and the
evaluation metric both call them, so the two can never disagree. Nothing the model
writes is executed outside `rewards.sandbox`.
"""

from rewards.registry import RewardSpec, RewardsConfig, get, names, register
from rewards.runner import RewardBatch, RewardError, RewardRunner, call_reward
from rewards.sandbox import SandboxLimits, SandboxResult, run_python
from rewards.verifiers import (
    addition_correct,
    code_pass_rate,
    countdown_correct,
    evaluate_equation,
    extract_answer,
    format_score,
    gsm8k_correct,
    is_valid_grid,
    math_correct,
    sudoku4_cell_accuracy,
    sudoku4_solved,
)

__all__ = [
    "RewardBatch", "RewardError", "RewardRunner", "RewardSpec", "RewardsConfig", "SandboxLimits", "SandboxResult",
    "addition_correct", "call_reward", "code_pass_rate", "countdown_correct", "evaluate_equation", "extract_answer",
    "format_score", "get", "gsm8k_correct", "is_valid_grid", "math_correct", "names", "register", "run_python",
    "sudoku4_cell_accuracy", "sudoku4_solved",
]
