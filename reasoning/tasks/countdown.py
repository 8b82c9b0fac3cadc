"""Countdown: combine the given numbers with + - * / and parentheses to hit the target,
using each number exactly once. Any correct equation is correct; the SFT reference is
one canonical equation per problem."""

from __future__ import annotations

import itertools
import operator

from reasoning.schema import ConfigError
from reasoning.tasks.base import ANSWER_FORMAT, Task, draw_distinct, row_field
from reasoning.tasks.registry import register_task

# symbol, function, precedence (integer arithmetic: division is only taken when exact)
_OPS = [("+", operator.add, 1), ("-", operator.sub, 1), ("*", operator.mul, 2), ("/", operator.floordiv, 2)]


def equations(numbers: tuple[int, ...]):
    """Every equation using all the numbers in this order, as (text, value, precedence),
    in a fixed preference order: + before - before * before /, left-leaning trees first.
    Every intermediate result is a positive integer; only needed parentheses are written."""
    if len(numbers) == 1:
        yield str(numbers[0]), numbers[0], 3
        return
    for split in range(len(numbers) - 1, 0, -1):
        for symbol, op, prec in _OPS:
            for ltext, a, lprec in equations(numbers[:split]):
                for rtext, b, rprec in equations(numbers[split:]):
                    if symbol == "/" and a % b:
                        continue
                    value = op(a, b)
                    if value <= 0:
                        continue
                    left = f"({ltext})" if lprec < prec else ltext
                    right = f"({rtext})" if rprec < prec or (rprec == prec and symbol in "-/") else rtext
                    yield f"{left}{symbol}{right}", value, prec


def canonical_solutions(numbers: list[int], max_target: int) -> dict[int, str]:
    """Reachable target -> its canonical equation: the first one found trying the numbers
    in descending order first. One fixed answer per problem makes SFT targets consistent."""
    found: dict[int, str] = {}
    for order in sorted(set(itertools.permutations(numbers)), reverse=True):
        for text, value, _ in equations(order):
            if value <= max_target and value not in found:
                found[value] = text
    return found


@register_task
class Countdown(Task):
    name = "countdown"
    reward = "countdown"
    columns = ("prompt", "numbers", "target", "solution")

    def generate(self, rng, n, split, exclude, num_numbers: int = 3, max_number: int = 100,
                 max_target: int = 100):
        if num_numbers not in (3, 4):
            raise ValueError(f"data.task_args.num_numbers: expected 3 or 4, got {num_numbers}")

        def make(rng):
            numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
            solutions = canonical_solutions(numbers, max_target)
            if not solutions:
                return None
            target = rng.choice(sorted(solutions))  # uniform over the reachable targets
            return {"prompt": f"use {' '.join(map(str, numbers))} to make {target}",
                    "numbers": numbers, "target": target, "solution": solutions[target]}

        return draw_distinct(make, rng, n, self.key, exclude, "countdown")

    def from_row(self, row, where):
        """`numbers` (a list) and `target`, or d1's JSONL `input` ("30,100,93") and `output` ("23");
        `solution` (an equation, the SFT target) when given, else one found by search (or none)."""
        numbers = row_field(row, ("numbers", "input"), where, "the numbers, a list or '30,100,93'")
        target = row_field(row, ("target", "output"), where, "the target number")
        try:
            numbers = [int(n) for n in (numbers.split(",") if isinstance(numbers, str) else numbers)]
            target = int(str(target).strip())
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: numbers {numbers!r} and target {target!r} must be integers") from None
        if len(numbers) not in (3, 4):
            raise ConfigError(f"{where}: expected 3 or 4 numbers, got {numbers}")
        solution = row.get("solution") or canonical_solutions(numbers, max(target, 0)).get(target, "")
        return {"prompt": f"use {' '.join(map(str, numbers))} to make {target}", "numbers": numbers,
                "target": target, "solution": solution}

    def key(self, example):
        return (tuple(sorted(example["numbers"])), example["target"])

    def reference(self, example):
        return ANSWER_FORMAT.format(example["solution"])

