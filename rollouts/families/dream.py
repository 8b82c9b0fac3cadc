"""Dream-v0-Instruct-7B / DiffuCoder snapshots (`model_type: Dream`), run natively.

Dream is a Qwen2 transformer (q/k/v biases, grouped-query attention) trained as a masked
diffusion LM with bidirectional attention; its weight names are Qwen2's already. We build
transformers' `Qwen2ForCausalLM` with `is_causal=False`. Dream's logit at position i
predicts token i+1 (it was initialised from an autoregressive model): the model returns
raw logits and the policy adapter shifts them (`SHIFT_LOGITS`), never the model.
"""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2ForCausalLM

from rollouts.families.native import ModelLoadError

NAME = "dream"
SHIFT_LOGITS = True
CONFIDENCE = "entropy"  # its reference sampler's rule (`confidence: auto`)
MODEL_CLASS = Qwen2ForCausalLM
NOT_QWEN2 = ("auto_map", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype")


def matches(config: dict) -> bool:
    return str(config.get("model_type", "")).lower() == "dream" or "DreamModel" in (config.get("architectures") or [])


def to_native(name: str) -> str | None:
    return name


to_upstream = to_native


def native_config(config: dict, where: str = "config.json") -> Qwen2Config:
    """The Qwen2Config (bidirectional) equivalent to a Dream config.json."""
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
        if key not in config:
            raise ModelLoadError(f"{where}: missing key '{key}' (a Dream config needs hidden_size, "
                                 f"num_attention_heads, num_hidden_layers, vocab_size)")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ModelLoadError(f"{where}: 'hidden_size' ({config['hidden_size']}) is not divisible by "
                             f"'num_attention_heads' ({config['num_attention_heads']})")
    native = Qwen2Config(**{k: v for k, v in config.items() if k not in NOT_QWEN2})
    native.is_causal = False
    native.use_cache = False
    native.mask_token_id = config.get("mask_token_id")
    return native

