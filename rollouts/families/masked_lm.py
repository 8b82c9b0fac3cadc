"""Encoder-only masked LMs (ModernBERT, BERT, ...) used as DLMs through `AutoModelForMaskedLM`;
their attention is bidirectional already."""

from __future__ import annotations

import torch
from transformers import AutoModelForMaskedLM

NAME = "masked_lm"
SHIFT_LOGITS = False


def matches(config: dict) -> bool:
    return any(str(a).endswith("ForMaskedLM") for a in config.get("architectures") or [])


def load(path: str, config: dict, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    return AutoModelForMaskedLM.from_pretrained(path, dtype=dtype)
