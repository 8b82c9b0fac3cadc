"""Multi-digit addition: `compute a+b`, answer the sum."""

from __future__ import annotations

from reasoning.tasks.base import ANSWER_FORMAT, Task, draw_distinct


class Addition(Task):
    name = "addition"
    reward = "addition"
    columns = ("prompt", "answer")

    def generate(self, rng, n, split, exclude, digits: int = 4):
        if digits < 1:
            raise ValueError(f"data.task_args.digits: expected >= 1, got {digits}")

        def make(rng):
            a, b = rng.randrange(10**digits), rng.randrange(10**digits)
            return {"prompt": f"compute {a}+{b}", "answer": str(a + b)}

        return draw_distinct(make, rng, n, self.key, exclude, "addition")

    def reference(self, example):
        return ANSWER_FORMAT.format(example["answer"])

