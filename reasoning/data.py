"""Prompt/answer tokenisation shared by SFT, evaluation and RL.

A training example becomes: left-padded prompt ids (chat template applied) followed
by an answer canvas of exactly `gen_length` tokens — the reference answer, then
[EOS] filling the rest (LLaDA style), so the model learns where answers end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Dataset

from rollouts.sampler import left_pad


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt text -> ids, through the tokenizer's chat template (as a user turn)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_answer(tokenizer, answer: str, gen_length: int) -> list[int]:
    """Reference answer -> exactly gen_length ids: the answer, then [EOS] padding."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) + 1 > gen_length:
        raise ValueError(
            f"a reference answer needs {len(ids) + 1} tokens (with [EOS]) but rollout.gen_length is "
            f"{gen_length}: {answer!r}"
        )
    return ids + [tokenizer.eos_token_id] * (gen_length - len(ids))


def decode_completion(tokenizer, answer_ids: list[int] | torch.Tensor) -> str:
    """Answer canvas -> text: everything before the first [EOS], special tokens dropped."""
    ids = answer_ids.tolist() if isinstance(answer_ids, torch.Tensor) else list(answer_ids)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def tokenize_sft(dataset: Dataset, task, tokenizer, gen_length: int) -> Dataset:
    """Add `prompt_ids` and `answer_ids` columns (reference answer from the task)."""

    def encode(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return {
            "prompt_ids": [encode_prompt(tokenizer, row["prompt"]) for row in rows],
            "answer_ids": [encode_answer(tokenizer, task.reference(row), gen_length) for row in rows],
        }

    return dataset.map(encode, batched=True, desc="tokenize")


@dataclass
class SFTBatch:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    answer_ids: torch.Tensor  # (B, gen_length)


def collate_sft(rows: dict, pad_id: int) -> SFTBatch:
    """Columns of a sliced tokenized Dataset -> tensors."""
    prompt_ids, prompt_mask = left_pad(rows["prompt_ids"], pad_id)
    return SFTBatch(prompt_ids, prompt_mask, torch.tensor(rows["answer_ids"], dtype=torch.long))
