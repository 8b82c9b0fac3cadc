"""Any transformers decoder (Llama, Qwen2, ...) run as a DLM: `config.is_causal = False`.

transformers 5 honours `is_causal=False`, so attention is bidirectional whatever the saved
config says. This is also dlmrl's own tiny default and every full fine-tune dlmrl saves
(their config.json carries `is_causal: false`, and `dlm_family` when they came from a
native family such as Dream, so the policy keeps shifting Dream's logits).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

NAME = "bidirectional"
SHIFT_LOGITS = False


def matches(config: dict) -> bool:
    return config.get("is_causal") is False or config.get("dlm_family") is not None


def load(path: str, config: dict, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config.is_causal = False
    return model
