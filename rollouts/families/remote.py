"""Explicit opt-in for checkpoints that ship their own modeling code (`auto_map`).

Runs that code, so only with `model.trust_remote_code: true`. LLaDA's and Dream's own
code does not import under transformers 5; for those, use the native `llada` / `dream`
families, which the error says when the import fails. Never chosen by `family: auto`.
"""

from __future__ import annotations

import torch

from rollouts.families.native import ModelLoadError

NAME = "remote"
SHIFT_LOGITS = False


def matches(config: dict) -> bool:
    return False  # only ever chosen explicitly


def load(path: str, config: dict, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    if not trust_remote_code:
        raise ModelLoadError(f"model setting 'trust_remote_code': the 'remote' family runs the modeling code "
                             f"shipped in '{path}'; set model.trust_remote_code: true if you trust it")
    if not config.get("auto_map"):
        raise ModelLoadError(f"model setting 'family': '{path}/config.json' has no auto_map, so there is no "
                             f"remote code to run; use family auto")
    try:
        loaded = AutoConfig.from_pretrained(path, trust_remote_code=True)
        auto_map = getattr(loaded, "auto_map", None) or {}
        loader = AutoModelForCausalLM if "AutoModelForCausalLM" in auto_map else AutoModel
        return loader.from_pretrained(path, dtype=dtype, trust_remote_code=True)
    except (ImportError, AttributeError, KeyError, TypeError, OSError, ValueError) as exc:
        from rollouts.families import native_family_for

        native = native_family_for(config)
        hint = (f"; this is a {native} checkpoint: use model.family: {native} (or auto), which needs no remote code"
                if native else "")
        raise ModelLoadError(f"the modeling code shipped in '{path}' failed to load under this transformers "
                             f"({type(exc).__name__}: {exc}){hint}") from None
