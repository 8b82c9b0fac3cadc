"""Countdown: combine the given numbers with + - * / and parentheses to hit the target,
using each number exactly once. Any correct equation is correct."""

from __future__ import annotations

import operator
from fractions import Fraction

from rewards.verifiers import countdown_correct
from reasoning.tasks.base import ANSWER_FORMAT, Task, draw_distinct

# symbol, function, precedence
_OPS = [("+", operator.add, 1), ("-", operator.sub, 1), ("*", operator.mul, 2), ("/", operator.truediv, 2)]


def random_equation(rng, numbers: list[int]) -> tuple[str, Fraction] | None:
    """Join the numbers (in random order) with random operators and a random tree shape,
    writing only the parentheses that are needed. Every intermediate result must be a
    positive integer. Returns (text, value) or None."""
    nodes = [(str(n), Fraction(n), 3) for n in rng.sample(numbers, len(numbers))]  # (text, value, precedence)
    while len(nodes) > 1:
        i = rng.randrange(len(nodes) - 1)
        (ltext, a, lprec), (rtext, b, rprec) = nodes[i], nodes[i + 1]
        symbol, op, prec = rng.choice(_OPS)
        if symbol == "/" and b == 0:
            return None
        value = op(a, b)
        if value <= 0 or value.denominator != 1:
            return None
        if lprec < prec:
            ltext = f"({ltext})"
        if rprec < prec or (rprec == prec and symbol in "-/"):
            rtext = f"({rtext})"
        nodes[i: i + 2] = [(f"{ltext}{symbol}{rtext}", value, prec)]
    text, value, _ = nodes[0]
    return text, value


class Countdown(Task):
    name = "countdown"
    columns = ("prompt", "numbers", "target", "solution")

    def generate(self, rng, n, split, exclude, num_numbers: int = 3, max_number: int = 100,
                 max_target: int = 100):
        if num_numbers not in (3, 4):
            raise ValueError(f"data.task_args.num_numbers: expected 3 or 4, got {num_numbers}")

        def make(rng):
            numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
            found = random_equation(rng, numbers)
            if found is None or not 1 <= found[1] <= max_target:
                return None
            equation, target = found
            return {"prompt": f"use {' '.join(map(str, numbers))} to make {int(target)}",
                    "numbers": numbers, "target": int(target), "solution": equation}

        return draw_distinct(make, rng, n, self.key, exclude, "countdown")

    def key(self, example):
        return (tuple(sorted(example["numbers"])), example["target"])

    def reference(self, example):
        return ANSWER_FORMAT.format(example["solution"])

    def score(self, completion, example):
        return float(countdown_correct(completion, example["numbers"], example["target"]))
