"""Built-in answer checkers. Each is pure and fast, and never executes model output.

These functions are the single scorer for a task: the training reward and the
evaluation metric both call them, so the two can never disagree.
"""

from __future__ import annotations

import ast
import math
import re
from fractions import Fraction
from typing import Sequence

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(completion: str) -> str:
    """The text inside the last <answer>...</answer>, else the whole completion, stripped."""
    found = _ANSWER.findall(completion)
    return (found[-1] if found else completion).strip()


# --- sudoku4 -----------------------------------------------------------------------

SUDOKU_UNITS: list[list[int]] = (
    [[r * 4 + c for c in range(4)] for r in range(4)]  # rows
    + [[r * 4 + c for r in range(4)] for c in range(4)]  # columns
    + [[(br + r) * 4 + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)]  # boxes
)


def is_valid_grid(grid: str) -> bool:
    """16 digits 1-4 with every row, column and 2x2 box a permutation of 1234."""
    return (
        len(grid) == 16
        and all(ch in "1234" for ch in grid)
        and all(len({grid[i] for i in unit}) == 4 for unit in SUDOKU_UNITS)
    )


def sudoku_grid(completion: str) -> str:
    """The digits of the answer (separators such as spaces or '|' are ignored)."""
    return "".join(ch for ch in extract_answer(completion) if ch.isdigit())


def sudoku4_solved(completion: str, puzzle: str) -> bool:
    """Correct = a valid grid that keeps every given; any valid completion counts."""
    grid = sudoku_grid(completion)
    return is_valid_grid(grid) and all(p == "0" or p == g for p, g in zip(puzzle, grid))


def sudoku4_cell_accuracy(completion: str, puzzle: str, solution: str) -> float:
    """Fraction of blank cells filled correctly (1.0 for any valid solution)."""
    if sudoku4_solved(completion, puzzle):
        return 1.0
    grid = sudoku_grid(completion).ljust(16, "?")[:16]
    blanks = [i for i, p in enumerate(puzzle) if p == "0"]
    return sum(grid[i] == solution[i] for i in blanks) / max(len(blanks), 1)


# --- countdown -----------------------------------------------------------------------

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
MAX_EQUATION_CHARS = 200
MAX_LITERAL = 10**6


class UnsafeExpression(ValueError):
    """The expression uses something outside the + - * / and integer whitelist."""


def evaluate_equation(text: str) -> tuple[Fraction, list[int]]:
    """Exact value and the integer literals of an arithmetic expression.

    Parsed with `ast` and walked against a whitelist (integers, + - * /, parentheses);
    nothing is ever evaluated by Python. Literals are bounded, there is no power
    operator, and the text length is capped, so no input can make this slow.
    """
    text = text.replace("×", "*").replace("÷", "/").replace("−", "-").strip()
    if "=" in text:
        text = text.split("=", 1)[0]
    if not text or len(text) > MAX_EQUATION_CHARS:
        raise UnsafeExpression("empty or too long")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UnsafeExpression(f"not an expression: {exc}") from exc
    numbers: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise UnsafeExpression("division by zero")
            return _OPS[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value <= MAX_LITERAL:
            numbers.append(node.value)
            return Fraction(node.value)
        raise UnsafeExpression(f"disallowed syntax: {type(node).__name__}")

    return walk(tree.body), numbers


def countdown_correct(completion: str, numbers: Sequence[int], target: int) -> bool:
    """Uses each given number exactly once (as a multiset) and hits the target exactly."""
    try:
        value, used = evaluate_equation(extract_answer(completion))
    except UnsafeExpression:
        return False
    return sorted(used) == sorted(numbers) and abs(value - target) < Fraction(1, 10**6)


# --- addition ------------------------------------------------------------------------

def addition_correct(completion: str, answer: str | int) -> bool:
    """The answer text is exactly the expected integer (spaces and commas ignored)."""
    text = extract_answer(completion).replace(",", "").replace(" ", "")
    return re.fullmatch(r"-?\d+", text) is not None and int(text) == int(answer)


# --- gsm8k ---------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def final_number(completion: str) -> Fraction | None:
    """The final numeric answer: from <answer>…</answer>, else the last \\boxed{}, else the
    last number in the text. Commas and a trailing period are ignored."""
    answers = _ANSWER.findall(completion)
    boxed = _BOXED.findall(completion)
    source = answers[-1] if answers else boxed[-1] if boxed else completion
    numbers = _NUMBER.findall(source.replace("$", ""))
    if not numbers:
        return None
    try:
        return Fraction(numbers[-1].replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def reference_number(answer: str | int | float) -> Fraction | None:
    """A reference answer: a number, or GSM8K's 'reasoning … #### 72' format."""
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return final_number(text)


def gsm8k_correct(completion: str, answer: str | int | float) -> bool:
    expected, got = reference_number(answer), final_number(completion)
    return expected is not None and got is not None and abs(got - expected) < Fraction(1, 10**6)


# --- math (math-verify) ---------------------------------------------------------------

def math_correct(completion: str, answer: str) -> bool:
    """math-verify equivalence of the last \\boxed{} (or <answer>) with the reference answer."""
    from math_verify import parse, verify

    boxed = _BOXED.findall(completion)
    answers = _ANSWER.findall(completion)
    candidate = f"\\boxed{{{boxed[-1]}}}" if boxed else f"${answers[-1].strip()}$" if answers else completion
    reference = answer if "\\boxed" in str(answer) or "$" in str(answer) else f"${answer}$"
    gold, pred = parse(reference), parse(candidate)
    return bool(gold) and bool(pred) and bool(verify(gold, pred))


# --- format --------------------------------------------------------------------------

_WELL_FORMED = re.compile(r"\s*(?:<think>(?:(?!<think>|</think>|<answer>)[\s\S])*</think>\s*)?"
                          r"<answer>((?:(?!<answer>|</answer>|<think>|</think>)[\s\S])*)</answer>")


def format_score(completion: str) -> float:
    """1.0: [<think>…</think>] <answer>…</answer> and nothing after; 0.5: well-formed but
    followed by trailing text (garbage or padding); 0.0: tags missing or malformed."""
    match = _WELL_FORMED.match(completion)
    if match is None or not match.group(1).strip():
        return 0.0
    return 1.0 if not completion[match.end():].strip() else 0.5


# --- code (runs only inside the sandbox) ----------------------------------------------

_CODE_BLOCK = re.compile(r"```(?:python|py)?\n([\s\S]*?)```")

def extract_code(completion: str) -> str:
    """The last ```python block, else the <answer> text, else the whole completion."""
    blocks = _CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else extract_answer(completion)


def code_pass_rate(completion: str, tests: Sequence[str], limits=None, entry_points: Sequence[str] | None = None) -> float:
    """Fraction of `tests` (Python snippets, e.g. asserts) that pass against the completion's code,
    judged outside the solution's reach (`rewards.judge`), in [0, 1]. 0.0 if nothing can run."""
    from rewards.judge import judge

    tests = list(tests)
    if not tests:
        return 0.0
    passed = sum(judge(extract_code(completion), tests, limits, entry_points))
    return min(max(passed / len(tests), 0.0), 1.0)


def temporal_self_consistency(predictions) -> float:
    """1 − H / log S for S per-step predicted answers (rows of `predictions`), H the entropy of the
    distribution of distinct rows: 1 when all agree, 0 when all differ (TCR's −TSE, rescaled)."""
    import numpy as np

    rows = np.asarray(predictions)
    if len(rows) < 2:
        return 1.0
    _, counts = np.unique(rows, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(1.0 - (-(p * np.log(p)).sum()) / math.log(len(rows)))
