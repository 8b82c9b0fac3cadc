"""Multi-digit addition: `compute a+b`, answer the sum."""

from __future__ import annotations

from reasoning.schema import ConfigError
from reasoning.tasks.base import ANSWER_FORMAT, Task, draw_distinct, row_field
from reasoning.tasks.registry import register_task


@register_task
class Addition(Task):
    name = "addition"
    reward = "addition"
    columns = ("prompt", "answer")
    default_digits = 4

    def prompt(self, a: int, b: int, digits: int) -> str:
        return f"compute {a}+{b}"

    def generate(self, rng, n, split, exclude, digits: int | None = None):
        digits = self.default_digits if digits is None else digits
        if digits < 1:
            raise ValueError(f"data.task_args.digits: expected >= 1, got {digits}")

        def make(rng):
            a, b = rng.randrange(10**digits), rng.randrange(10**digits)
            return {"prompt": self.prompt(a, b, digits), "answer": str(a + b)}

        return draw_distinct(make, rng, n, self.key, exclude, self.name)

    def from_row(self, row, where):
        """`a` and `b` (the addends; the answer is their sum)."""
        try:
            a, b = (int(row_field(row, (name,), where, "a non-negative integer")) for name in ("a", "b"))
        except ValueError:
            raise ConfigError(f"{where}: fields 'a' and 'b' must be integers, got {row.get('a')!r}, "
                              f"{row.get('b')!r}") from None
        return {"prompt": self.prompt(a, b, max(len(str(a)), len(str(b)))), "answer": str(a + b)}

    def reference(self, example):
        return ANSWER_FORMAT.format(example["answer"])
