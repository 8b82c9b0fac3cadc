"""File-backed tasks: GSM8K- and MATH-style problems from a local JSONL/parquet file.

    data: {task: gsm8k, task_args: {path: data/gsm8k_test.jsonl, prompt_field: question, answer_field: answer}}

Read through `datasets` (a hub name also works where the hub is reachable). The first
`test_size` rows are the test split, the rest the train split (all rows when the file
is smaller). Scored by the registered `gsm8k` / `math` rewards.
"""

from __future__ import annotations

import json
import os

from datasets import Dataset, DatasetDict, load_dataset

import rewards
from reasoning.schema import ConfigError, shown
from reasoning.tasks.base import ANSWER_FORMAT, DataConfig, Task
from reasoning.tasks.registry import register_task

INSTRUCTION = "\nGive the final answer inside <answer></answer>."


def read_file(path: str, key: str = "data.task_args.path") -> Dataset:
    """A JSONL / JSON / parquet / CSV file (or hub dataset name) -> Dataset, its columns as they are."""
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise ConfigError(f"config key '{key}': data file '{path}' is {file_kind(path)}, not a regular file")
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(
            os.path.splitext(path)[1].lower())
        if kind is None:
            raise ConfigError(f"config key '{key}': '{path}' is not a .jsonl, .json, .parquet or .csv file")
        if os.path.getsize(path) == 0:
            raise ConfigError(f"config key '{key}': data file '{path}' is empty")
        if kind == "json" and path.lower().endswith(".jsonl"):
            check_jsonl(path)
        try:
            rows = load_dataset(kind, data_files=path, split="train", **csv_as_strings(path, kind))
        except Exception as exc:  # noqa: BLE001 — datasets/pyarrow raise many types for a bad file
            cause = exc.__cause__ or exc
            raise ConfigError(f"data file '{path}' could not be read as {kind}: {type(cause).__name__}: "
                              f"{str(cause).splitlines()[0][:200] if str(cause) else ''}") from None
    elif os.sep in path or path.endswith((".jsonl", ".json", ".parquet", ".csv")):
        raise ConfigError(f"config key '{key}': data file '{path}' not found")
    else:
        rows = load_dataset(path, split="test")
    if len(rows) == 0:
        raise ConfigError(f"config key '{key}': data file '{path}' has no rows")
    return rows


def file_kind(path: str) -> str:
    """What a path that is not a regular file is, in words (after following links)."""
    import stat

    mode = os.stat(path).st_mode
    for test, words in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return words + (f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else "")
    return "not a regular file"


def csv_as_strings(path: str, kind: str) -> dict:
    """CSV has no types: read every column as a string (d1's sudoku puzzles start with a 0, which a
    number would lose)."""
    if kind != "csv":
        return {}
    import csv

    from datasets import Features, Value

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:  # -sig: a byte-order mark is no name
        header = next(csv.reader(fh), [])
    return {"features": Features({name: Value("string") for name in header}), "encoding": "utf-8-sig"} if header else {}


def check_jsonl(path: str) -> None:
    """Every line of a JSONL file is a JSON object; the error names the line."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"data file '{path}' line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise ConfigError(f"data file '{path}' line {number}: expected a JSON object, got "
                                  f"{type(value).__name__}")


def check_prompts(rows: Dataset, path: str, field: str, what: str = "a non-empty string",
                  conversation: bool = False, skip: bool = False) -> Dataset:
    """Every row's `field` is a non-empty string (or, with `conversation`, a list of messages;
    `what` mentioning a number admits numbers): a NaN, null, list or dict would silently become a
    prompt such as "None". The error names the file and the line (JSONL) or row; with `skip`
    (data.bad_rows: skip) such rows are dropped instead, with one line saying how many."""
    lines = None
    if path.lower().endswith(".jsonl") and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [number for number, line in enumerate(fh, 1) if line.strip()]
    bad: list[int] = []
    first = ""
    for index, value in enumerate(rows[field]):
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
            and abs(value) != float("inf")
        ok = (isinstance(value, str) and value.strip()) or ("number" in what and number) or (
            conversation and isinstance(value, list) and value and all(isinstance(m, dict) for m in value))
        if not ok:
            where = f"line {lines[index]}" if lines and index < len(lines) else f"row {index + 1}"
            problem = f"data file '{path}' {where}: field '{field}' must be {what}, got {shown(value)}"
            if not skip:
                raise ConfigError(problem + " (data.bad_rows: skip drops such rows)")
            bad.append(index)
            first = first or problem
    if not bad:
        return rows
    if len(bad) == len(rows):
        raise ConfigError(f"data file '{path}': no usable row left — {first}")
    print(f"data file '{path}': skipped {len(bad)} of {len(rows)} rows (data.bad_rows: skip); the first: {first}")
    dropped = set(bad)
    return rows.select([i for i in range(len(rows)) if i not in dropped])


def load_rows(path: str, prompt_field: str, answer_field: str, key: str = "data.task_args.path",
              skip_bad: bool = False) -> Dataset:
    """A problems file -> Dataset(prompt, answer, ...): the prompt gets the answer-format instruction."""
    rows = read_file(path, key)
    for field, name in ((prompt_field, "prompt_field"), (answer_field, "answer_field")):
        if field not in rows.column_names:
            raise ConfigError(f"data file '{path}' has no field '{field}' (data.task_args.{name}); "
                              f"its fields are {rows.column_names}")
    rows = check_prompts(rows, path, prompt_field, skip=skip_bad)
    rows = check_prompts(rows, path, answer_field, what="a non-empty string or a number", skip=skip_bad)
    rows = rows.map(lambda r: {"prompt": str(r[prompt_field]) + INSTRUCTION, "answer": str(r[answer_field])},
                    remove_columns=[c for c in rows.column_names if c in ("prompt", "answer")])
    return rows


class FileTask(Task):
    """Problems and reference answers from a file; the reward names the checker."""

    columns = ("prompt", "answer")
    default_prompt_field = "question"

    def build(self, cfg: DataConfig) -> DatasetDict:
        args = dict(cfg.task_args)
        if "path" not in args:
            raise ConfigError(f"config key 'data.task_args.path': task '{self.name}' reads its problems from a "
                              f"file; give a .jsonl or .parquet path")
        unknown = set(args) - {"path", "prompt_field", "answer_field"}
        if unknown:
            raise ConfigError(f"unknown config key 'data.task_args.{sorted(unknown)[0]}' for task '{self.name}' "
                              f"(expected path, prompt_field, answer_field)")
        rows = load_rows(args["path"], args.get("prompt_field", self.default_prompt_field),
                         args.get("answer_field", "answer"), skip_bad=cfg.bad_rows == "skip")
        n_test = min(cfg.test_size, len(rows))
        test = rows.select(range(n_test))
        train = rows.select(range(n_test, len(rows))) if n_test < len(rows) else rows
        return DatasetDict(train=train, test=test)

    def reference(self, example):
        answer = example["answer"]
        return ANSWER_FORMAT.format(answer.rsplit("####", 1)[-1].strip() if "####" in answer else answer)


@register_task
class GSM8K(FileTask):
    name = "gsm8k"
    reward = "gsm8k"


@register_task
class Math500(FileTask):
    name = "math500"
    reward = "math"
    default_prompt_field = "problem"


@register_task
class TRLDataset(Task):
    """A TRL GRPO dataset used unchanged: a `prompt` column (text, or a conversation as a list of
    {role, content} messages) and any other columns, which every reward receives as keyword
    lists. `reward` names the function that decides correctness for eval (ours or TRL's, e.g.
    accuracy_reward); the RL run may add more under `rewards:`.

        data: {task: trl, task_args: {path: data/train.jsonl, reward: accuracy_reward}}
    """

    name = "trl"
    columns = ("prompt",)

    def build(self, cfg: DataConfig) -> DatasetDict:
        args = dict(cfg.task_args)
        unknown = set(args) - {"path", "reward", "test_path"}
        if unknown:
            raise ConfigError(f"unknown config key 'data.task_args.{sorted(unknown)[0]}' for task 'trl' "
                              f"(expected path, reward, test_path)")
        for key in ("path", "reward"):
            if key not in args:
                raise ConfigError(f"config key 'data.task_args.{key}': task 'trl' needs it (path: a .jsonl/.parquet "
                                  f"file with a 'prompt' column; reward: the function that scores eval)")
        try:
            rewards.get(args["reward"])
        except KeyError as exc:
            raise ConfigError(f"config key 'data.task_args.reward': {exc.args[0]}") from None
        self.reward = args["reward"]
        rows = read_file(args["path"])
        if "prompt" not in rows.column_names:
            raise ConfigError(f"data file '{args['path']}' has no 'prompt' column (a TRL dataset's prompt: text or "
                              f"a list of {{role, content}} messages); its columns are {rows.column_names}")
        rows = check_prompts(rows, args["path"], "prompt", "a non-empty string or a list of {role, content} messages",
                             conversation=True, skip=cfg.bad_rows == "skip")
        if "test_path" in args:
            return DatasetDict(train=rows, test=read_file(args["test_path"], "data.task_args.test_path"))
        n_test = min(cfg.test_size, len(rows))
        train = rows.select(range(n_test, len(rows))) if n_test < len(rows) else rows
        return DatasetDict(train=train, test=rows.select(range(n_test)))

    def reference(self, example):
        raise ConfigError("task 'trl' has no reference answers for SFT; use it for RL and eval")
