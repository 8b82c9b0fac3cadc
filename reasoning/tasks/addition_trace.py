"""Long-canvas addition: the prompt states the method, the answer writes out every column.

Built to measure rollouts on canvases shaped like real jobs' (issue 16): a prompt of 89 tokens
with the tiny model's character tokenizer and an answer of ~70 tokens (6 digits by default: 6
columns `a+b+carry=sum` of 9 characters each, then `<answer>sum</answer>`), decoded on a
128-token canvas in 32-token blocks, [EOS]-filled after the answer as in real jobs. (With 8
digits the tiny model had learned no complete answer after 1,000 SFT steps.) Each column depends on the one before it (the carry), so the trace is
real reasoning that a block-wise decoder must get right left to right. Scored by the `addition`
reward on the final answer only, like `addition`.
"""

from __future__ import annotations

from reasoning.tasks.addition import Addition
from reasoning.tasks.base import ANSWER_FORMAT

INSTRUCTION = "Add column by column from the right, as digit+digit+carry=sum, then answer.\n"


def column_trace(a: str, b: str) -> str:
    """`a`, `b` as equal-length digit strings -> 'a_i+b_i+c=ss ' for each column, right to left."""
    carry, columns = 0, []
    for da, db in zip(reversed(a), reversed(b)):
        total = int(da) + int(db) + carry
        columns.append(f"{da}+{db}+{carry}={total:02d}")
        carry = total // 10
    return " ".join(columns)


class AdditionTrace(Addition):
    name = "addition_trace"
    default_digits = 6

    def prompt(self, a: int, b: int, digits: int) -> str:
        return f"{INSTRUCTION}{a:0{digits}d}+{b:0{digits}d}"

    def reference(self, example):
        a, b = example["prompt"].rsplit("\n", 1)[1].split("+")
        return column_trace(a, b) + " " + ANSWER_FORMAT.format(example["answer"])
