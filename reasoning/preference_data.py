"""Preference pairs for `dlmrl prefer`: TRL's DPO dataset format, or pairs built from a task.

A row of TRL's explicit-prompt format holds `prompt`, `chosen` and `rejected`, either plain strings
or conversations (`prompt` a list of {role, content} messages, `chosen` / `rejected` the assistant
turn(s) that answer it). An answer becomes a canvas of `gen_length` tokens (the text, then [EOS]),
exactly as SFT encodes a reference answer, so the ELBO is over the same canvas the sampler fills.
"""

from __future__ import annotations

from datasets import Dataset

from reasoning.data import encode_answer, encode_prompt
from reasoning.schema import ConfigError
from reasoning.tasks.base import Task, row_field
from reasoning.tasks.files import read_file

COLUMNS = ("prompt", "chosen", "rejected")


def answer_text(value, where: str, column: str) -> str:
    """A chosen / rejected cell -> the answer's text: a string, or the content of the last assistant turn."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        turns = [m for m in value if m.get("role") == "assistant"]
        if turns and isinstance(turns[-1].get("content"), str) and turns[-1]["content"]:
            return turns[-1]["content"]
    raise ConfigError(f"{where}: column {column!r} must be a non-empty string or a list of messages ending in an "
                      f"assistant turn with text (TRL's DPO format), got {value!r:.80}")


def read_pairs(path: str, key: str) -> list[dict]:
    """The rows of a TRL DPO file as {prompt, chosen, rejected} (answers as text); errors name the row."""
    rows = read_file(path, key)
    missing = [c for c in COLUMNS if c not in rows.column_names]
    if missing:
        raise ConfigError(f"config key '{key}': data file '{path}' has no column {missing[0]!r} (TRL's explicit-prompt "
                          f"DPO format: prompt, chosen, rejected); its columns are {rows.column_names}")
    pairs = []
    for i, row in enumerate(rows):
        where = f"data file '{path}' row {i + 1}"
        prompt = row_field(row, ("prompt",), where, "a string or a list of messages")
        pairs.append({"prompt": prompt, "chosen": answer_text(row["chosen"], where, "chosen"),
                      "rejected": answer_text(row["rejected"], where, "rejected")})
    return pairs


def pairs_from_task(task: Task, examples: Dataset) -> list[dict]:
    """chosen = the task's reference answer; rejected = the reference answer of the next problem that
    the task's own scorer gives less than 1 for this one (a wrong answer in the task's own format)."""
    rows = list(examples)
    references = [task.reference(row) for row in rows]
    pairs = []
    for i, row in enumerate(rows):
        for shift in range(1, min(len(rows), 20)):
            wrong = references[(i + shift) % len(rows)]
            if task.score(wrong, row) < 1:
                pairs.append({"prompt": row["prompt"], "chosen": references[i], "rejected": wrong})
                break
    if not pairs:
        raise ConfigError(f"config key 'data.task': task '{task.name}' gave no preference pair (every other problem's "
                          f"answer scores 1 here, or the split has one problem)")
    return pairs


def tokenize_pairs(pairs: list[dict], tokenizer, gen_length: int, chat_template: str, where: str) -> Dataset:
    """prompt_ids, chosen_ids and rejected_ids (gen_length each: the text, then [EOS])."""
    out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
    for i, pair in enumerate(pairs):
        try:
            out["prompt_ids"].append(encode_prompt(tokenizer, pair["prompt"], chat_template))
            out["chosen_ids"].append(encode_answer(tokenizer, pair["chosen"], gen_length))
            out["rejected_ids"].append(encode_answer(tokenizer, pair["rejected"], gen_length))
        except ValueError as exc:
            raise ConfigError(f"{where} pair {i + 1}: {exc}") from None
    return Dataset.from_dict(out)
