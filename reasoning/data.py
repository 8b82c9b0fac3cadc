"""Prompt/answer tokenisation shared by SFT, evaluation and RL.

A training example becomes: left-padded prompt ids (chat template applied) followed
by an answer canvas of exactly `gen_length` tokens — the reference answer, then
[EOS] filling the rest (LLaDA style), so the model learns where answers end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from datasets import Dataset

from rollouts.policy import stop_token_ids
from rollouts.decoding import left_pad


def encode_prompt(tokenizer, prompt: str | list[dict], chat_template: str = "auto") -> list[int]:
    """A prompt -> ids. A TRL conversational prompt (a list of {role, content} messages) goes
    through TRL's `maybe_apply_chat_template` (the generation prompt is added after a user turn);
    a plain string becomes one user turn of the template — as d1 and the model cards prompt
    instruct models — unless `chat_template` is "none" or the tokenizer has no template, in
    which case it is tokenized as it is (with the tokenizer's own special tokens, e.g. BOS)."""
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    has_template = chat_template == "auto" and getattr(tokenizer, "chat_template", None) is not None
    example = {"prompt": prompt}
    if is_conversational(example):
        if not has_template:
            raise ValueError("a conversational prompt (list of messages) needs a chat template "
                             "(data.chat_template: auto and a tokenizer that has one)")
    elif not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string or a list of {{role, content}} messages, got {prompt!r:.80}")
    elif not has_template:
        return tokenizer(prompt, add_special_tokens=True)["input_ids"]
    else:
        example = {"prompt": [{"role": "user", "content": prompt}]}
    text = maybe_apply_chat_template(example, tokenizer)["prompt"]
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


def decode_completion(tokenizer, answer_ids: list[int] | torch.Tensor, stop: tuple[int, ...] | None = None) -> str:
    """Answer canvas -> text: everything before the first stop token ([EOS] or the template's
    end of turn; default: `stop_token_ids(tokenizer)`), special tokens dropped."""
    ids = answer_ids.tolist() if isinstance(answer_ids, torch.Tensor) else list(answer_ids)
    ids = ids[:stop_index(ids, stop_token_ids(tokenizer) if stop is None else stop)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def stop_index(answer_ids: list[int] | torch.Tensor, stop: tuple[int, ...]) -> int:
    """Position of the first stop token (the canvas length when there is none)."""
    ids = answer_ids.tolist() if isinstance(answer_ids, torch.Tensor) else list(answer_ids)
    return next((i for i, token in enumerate(ids) if token in stop), len(ids))


def tokenize_sft(dataset: Dataset, task, tokenizer, gen_length: int, chat_template: str = "auto") -> Dataset:
    """Add `prompt_ids` and `answer_ids` columns (reference answer from the task)."""

    def encode(batch):
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        return {
            "prompt_ids": [encode_prompt(tokenizer, row["prompt"], chat_template) for row in rows],
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
