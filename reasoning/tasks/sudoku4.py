"""4x4 sudoku. By default train and test are split by *solution grid*: no test grid is
ever a training grid, so a held-out puzzle can only be solved by the rules. There are
only 288 grids; `task_args: {split_by: puzzle}` gives the looser split of the public d1
data (test puzzles are unseen, their grids are not), for comparison with published
numbers. Any valid completion counts."""

from __future__ import annotations

import itertools
import random
from functools import lru_cache

from rewards.verifiers import SUDOKU_UNITS
from reasoning.schema import ConfigError
from reasoning.tasks.base import ANSWER_FORMAT, Task, draw_distinct, row_field
from reasoning.tasks.registry import register_task


@lru_cache(maxsize=1)
def all_grids() -> tuple[str, ...]:
    """All 288 valid 4x4 sudoku grids, in a fixed order (rows chosen row by row, pruned)."""
    rows = ["".join(p) for p in itertools.permutations("1234")]
    grids = [""]
    for _ in range(4):
        grids = [g + r for g in grids for r in rows if _consistent(g + r)]
    return tuple(grids)


def _consistent(partial: str) -> bool:
    """No repeated digit in any unit, looking only at the cells filled so far."""
    for unit in SUDOKU_UNITS:
        seen = [partial[i] for i in unit if i < len(partial)]
        if len(seen) != len(set(seen)):
            return False
    return True


def split_grids(seed: int, test_fraction: float) -> dict[str, list[str]]:
    grids = list(all_grids())
    random.Random(f"{seed}-grids").shuffle(grids)
    n_test = max(1, round(len(grids) * test_fraction))
    return {"test": grids[:n_test], "train": grids[n_test:]}


@register_task
class Sudoku4(Task):
    name = "sudoku4"
    reward = "sudoku4"
    metric_rewards = {"cell_accuracy": "sudoku4_cells"}
    columns = ("prompt", "puzzle", "solution")

    def __init__(self) -> None:
        self.seed = 0

    def generate(self, rng, n, split, exclude, min_blanks: int = 4, max_blanks: int = 10,
                 test_grid_fraction: float = 0.2, split_by: str = "grid"):
        if not 1 <= min_blanks <= max_blanks <= 16:
            raise ValueError(f"data.task_args: need 1 <= min_blanks <= max_blanks <= 16, got {min_blanks}, {max_blanks}")
        if split_by not in ("grid", "puzzle"):
            raise ValueError(f"data.task_args.split_by: expected 'grid' or 'puzzle', got '{split_by}'")
        grids = split_grids(self.seed, test_grid_fraction)[split] if split_by == "grid" else list(all_grids())

        def make(rng):
            solution = rng.choice(grids)
            blanks = set(rng.sample(range(16), rng.randint(min_blanks, max_blanks)))
            puzzle = "".join("0" if i in blanks else ch for i, ch in enumerate(solution))
            return {"prompt": f"sudoku {puzzle}", "puzzle": puzzle, "solution": solution}

        return draw_distinct(make, rng, n, self.key, exclude, "sudoku4")

    def build(self, cfg):
        self.seed = cfg.seed
        return super().build(cfg)

    def from_row(self, row, where):
        """`puzzle` and `solution` (16 digits, 0 for a blank), or d1's CSV columns `Puzzle`, `Solution`."""
        cells = {}
        for names, digits in ((("puzzle", "Puzzle"), "01234"), (("solution", "Solution"), "1234")):
            value = str(row_field(row, names, where, "16 digits, row by row")).strip()
            if len(value) != 16 or set(value) - set(digits):
                raise ConfigError(f"{where}: field '{names[0]}' = {value!r}: expected 16 digits of {digits}")
            cells[names[0]] = value
        if any(p != "0" and p != s for p, s in zip(cells["puzzle"], cells["solution"])):
            raise ConfigError(f"{where}: the solution does not keep the puzzle's givens")
        return {"prompt": f"sudoku {cells['puzzle']}", **cells}

    def key(self, example):
        return example["puzzle"]

    def reference(self, example):
        return ANSWER_FORMAT.format(example["solution"])


