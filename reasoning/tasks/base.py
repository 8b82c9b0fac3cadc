"""What a task is: deterministic train/test data, a prompt template, and one scorer.

`score(completion, example)` is used both as the RL reward and as the eval metric,
so training reward and eval accuracy never disagree.
"""

from __future__ import annotations

import inspect
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import rewards
from datasets import Dataset, DatasetDict

from reasoning.schema import ConfigError, suggest

ANSWER_FORMAT = "<answer>{}</answer>"


@dataclass
class DataConfig:
    task: str = "sudoku4"
    seed: int = 0
    train_size: int = 20000
    test_size: int = 512
    task_args: dict[str, Any] = field(default_factory=dict)  # task-specific, e.g. {num_numbers: 4}
    # auto: prompts go through the tokenizer's chat template (a string as one user turn, a TRL
    # conversation as it is); none: plain text (base models)
    chat_template: Literal["auto", "none"] = "auto"
    # a data file row whose prompt (or answer) is not a non-empty string: refuse (an error naming the
    # file and line) or skip (dropped, with one line saying how many and which was first)
    bad_rows: Literal["refuse", "skip"] = "refuse"

    def __post_init__(self) -> None:
        if self.train_size < 0:
            raise ConfigError(f"config key 'data.train_size': expected >= 0, got {self.train_size}")
        if self.test_size < 1:
            raise ConfigError(f"config key 'data.test_size': expected >= 1, got {self.test_size}")


def score_one(reward: str, completion: str, example: dict) -> float:
    """Call a registered reward function on a single example (its columns as 1-element lists)."""
    columns = {key: [value] for key, value in example.items() if key != "prompt"}
    prompt = example.get("prompt")
    shown = [{"role": "assistant", "content": completion}] if isinstance(prompt, list) else completion  # as TRL
    value = rewards.call_reward(rewards.get(reward), [prompt], [shown], None, columns)[0]
    return 0.0 if value is None else float(value)


class Task:
    """A reasoning task. Subclasses fill in `generate` and `reference`, and name their reward.

    `score` calls the task's registered reward function (TRL signature) on one example,
    so evaluation accuracy and the RL training reward are the same function.
    """

    name: str = ""
    columns: tuple[str, ...] = ()
    reward: str = ""  # the registered reward that decides correctness
    metric_rewards: dict[str, str] = {}  # eval metric name -> registered reward (e.g. partial credit)

    def generate(self, rng: random.Random, n: int, split: str, exclude: set, **task_args) -> list[dict]:
        """`n` distinct examples for `split`; keys in `exclude` must not be produced."""
        raise NotImplementedError

    def key(self, example: dict) -> Any:
        """What must never be shared between train and test."""
        return example["prompt"]

    def reference(self, example: dict) -> str:
        """The target completion used by SFT."""
        raise NotImplementedError

    def score(self, completion: str, example: dict) -> float:
        """The task reward of one completion (1.0 = correct)."""
        return score_one(self.reward, completion, example)

    def metrics(self, completion: str, example: dict) -> dict[str, float]:
        """Extra per-example eval metrics (averaged by the caller)."""
        return {metric: score_one(reward, completion, example) for metric, reward in self.metric_rewards.items()}

    def from_row(self, row: dict, where: str) -> dict:
        """One example from a row of a user's data file (`data.task_args.path`, `dlmrl eval --data`);
        the fields each task reads are in docs/models.md. A ConfigError names `where` and the field."""
        raise ConfigError(f"config key 'data.task_args.path': task '{self.name}' does not read data files")

    def build(self, cfg: DataConfig) -> DatasetDict:
        """Deterministic train/test splits; the test set depends only on the seed and test_size.
        With `task_args.path` the rows come from that file instead: the first test_size are the test
        split, the rest the train split (all rows when the file is smaller)."""
        if "path" in cfg.task_args:
            return self.build_from_file(cfg)
        check_task_args(self, cfg.task_args)
        test = self.generate(random.Random(f"{cfg.seed}-test"), cfg.test_size, "test", set(), **cfg.task_args)
        held_out = {self.key(ex) for ex in test}
        train = self.generate(random.Random(f"{cfg.seed}-train"), cfg.train_size, "train", held_out, **cfg.task_args)
        return DatasetDict(train=Dataset.from_list(train), test=Dataset.from_list(test))

    def build_from_file(self, cfg: DataConfig) -> DatasetDict:
        from reasoning.tasks.files import read_file  # files.py builds on this module

        path = cfg.task_args["path"]
        extra = sorted(set(cfg.task_args) - {"path"})
        if extra:
            raise ConfigError(f"config key 'data.task_args.{extra[0]}': task '{self.name}' takes only 'path' when it "
                              f"reads a file (the fields it reads are in docs/models.md)")
        examples = [self.from_row(row, f"data file '{path}' row {i + 1}") for i, row in enumerate(read_file(path))]
        n_test = min(cfg.test_size, len(examples))
        train = examples[n_test:] if n_test < len(examples) else examples
        return DatasetDict(train=Dataset.from_list(train), test=Dataset.from_list(examples[:n_test]))


def row_field(row: dict, names: tuple[str, ...], where: str, expected: str):
    """The first of `names` the row has (a file may use our field name or the layout it comes in)."""
    for name in names:
        if row.get(name) is not None:
            return row[name]
    present = [name for name in names if name in row]
    if present:  # the column exists, this row's cell is empty
        raise ConfigError(f"{where}: field {present[0]!r} is empty or missing in this row ({expected})")
    raise ConfigError(f"{where}: no field {' or '.join(repr(n) for n in names)} ({expected}); "
                      f"its fields are {sorted(row)}")


def check_task_args(task: Task, task_args: dict) -> None:
    params = inspect.signature(task.generate).parameters
    valid = [name for name in params if name not in ("rng", "n", "split", "exclude")]
    for key in task_args:
        if key not in valid:
            raise ConfigError(f"unknown config key 'data.task_args.{key}' for task '{task.name}'{suggest(key, valid)}")


def draw_distinct(make, rng: random.Random, n: int, key, exclude: set, what: str) -> list[dict]:
    """Call `make(rng)` until n examples with distinct keys not in `exclude` exist."""
    seen, out, tries = set(exclude), [], 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"could only generate {len(out)} distinct {what} examples of the {n} asked for")
        example = make(rng)
        if example is None or key(example) in seen:
            continue
        seen.add(key(example))
        out.append(example)
    return out
