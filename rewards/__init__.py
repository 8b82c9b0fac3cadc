"""Rewards: answer verifiers shared by training reward and evaluation."""

from rewards.verifiers import (
    addition_correct,
    countdown_correct,
    evaluate_equation,
    extract_answer,
    is_valid_grid,
    sudoku4_cell_accuracy,
    sudoku4_solved,
)

__all__ = [
    "addition_correct",
    "countdown_correct",
    "evaluate_equation",
    "extract_answer",
    "is_valid_grid",
    "sudoku4_cell_accuracy",
    "sudoku4_solved",
]
