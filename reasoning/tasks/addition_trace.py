"""Long-canvas addition: the answer writes the sum out row by row, as on paper, then answers.

Built to measure rollouts on canvases shaped like real jobs' (issue 16): with the tiny model's
character tokenizer a prompt is 118 tokens and an answer 79 (a 128-token canvas decoded in
32-token blocks, [EOS]-filled after the answer as in real jobs). Numbers are written with 13
digits (12 + a leading 0 for the final carry), and the answer has four rows aligned with them,
then the sum:

    u=  digit sums mod 10          u_i = (a_i + b_i) mod 10
    g=  carry generated            g_i = 1 if a_i + b_i >= 10
    c=  carry into the column      c_i = g_(i+1) or (u_(i+1) = 9 and c_(i+1)), the units' c = 0
    s=  the sum's digits           s_i = (u_i + c_i) mod 10
    <answer>s</answer>

Every character of a row depends on characters at fixed offsets (the rows are aligned), and the
carry row is a chain from right to left, so the block-wise decoder has real dependencies to get
right. (A first version wrote one `a+b+carry=sum` term per column, right to left; its lookups
sit at offsets that change from column to column, and the tiny model had learned none of them
after 1,000 SFT steps.) Scored by the `addition` reward on the final answer, like `addition`.
"""

from __future__ import annotations

from reasoning.tasks.addition import Addition
from reasoning.tasks.base import ANSWER_FORMAT
from reasoning.tasks.registry import register_task

INSTRUCTION = "Add a and b in rows: u = digit sums mod 10, g = carries made, c = carries in, s = sum.\n"


def written_rows(a: str, b: str) -> dict[str, str]:
    """The rows u, g, c, s for two equal-length digit strings (most significant digit first)."""
    u = [(int(x) + int(y)) % 10 for x, y in zip(a, b)]
    g = [int(int(x) + int(y) >= 10) for x, y in zip(a, b)]
    c = [0] * len(a)
    for i in range(len(a) - 2, -1, -1):  # right to left: the carry out of column i+1
        c[i] = int(g[i + 1] or (u[i + 1] == 9 and c[i + 1]))
    s = [(ui + ci) % 10 for ui, ci in zip(u, c)]
    return {name: "".join(map(str, row)) for name, row in (("u", u), ("g", g), ("c", c), ("s", s))}


@register_task
class AdditionTrace(Addition):
    name = "addition_trace"
    default_digits = 12

    def prompt(self, a: int, b: int, digits: int) -> str:
        return f"{INSTRUCTION}a={a:0{digits + 1}d}\nb={b:0{digits + 1}d}"

    def reference(self, example):
        lines = example["prompt"].split("\n")
        rows = written_rows(lines[-2][2:], lines[-1][2:])
        return "".join(f"{name}={row}\n" for name, row in rows.items()) + ANSWER_FORMAT.format(rows["s"])
