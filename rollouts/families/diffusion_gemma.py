"""transformers' native DiffusionGemma (`DiffusionGemmaForBlockDiffusion`): the prompt goes through
its causal encoder, the canvas through its bidirectional decoder (see `BlockDiffusionPolicy`)."""

from __future__ import annotations

import torch

from rollouts.families.native import ModelLoadError

NAME = "diffusion_gemma"
SHIFT_LOGITS = False


def matches(config: dict) -> bool:
    return config.get("model_type") == "diffusion_gemma"


def load(path: str, config: dict, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    from transformers import DiffusionGemmaForBlockDiffusion

    if not matches(config):
        raise ModelLoadError(f"config key 'model.family': '{path}' holds a '{config.get('model_type')}' model, "
                             f"not diffusion_gemma")
    return DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=dtype)
