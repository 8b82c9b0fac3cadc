"""SDAR / TraDo snapshots (`model_type: sdar`, `SDARForCausalLM`), run natively: block diffusion.

SDAR's weights and layers are Qwen3's exactly (per-head q/k RMSNorm, GQA, `head_dim` that need not
be hidden/heads, untied lm head); only the attention differs: causal across blocks of
`block_length` tokens and bidirectional within a block — query i may attend key j iff
j // block_length <= i // block_length (positions counted from the sequence's first real token,
so the prompt's last partial block shares a block with the first answer tokens). We build
transformers' own `Qwen3ForCausalLM` from the snapshot's config values and give it that mask
(rollouts/families/block.py: without one, from a padding mask, or SDAR's own (B, L, L) {0, 1}).

config.json has no block length (every SDAR / TraDo release uses 4) and no mask id (the tokenizer's
`<|MASK|>`): `rollout.block_length` (config attribute `block_length`) overrides the 4.
The snapshot's modeling code is never imported.
"""

from __future__ import annotations

from transformers import Qwen3Config, Qwen3ForCausalLM

from rollouts.families.block import BlockCausalForward
from rollouts.families.native import ModelLoadError, require

NAME = "sdar"
SHIFT_LOGITS = False
CONFIDENCE = "max_prob"  # SDAR's samplers: the probability of the (argmax / sampled) token
BLOCK_LENGTH = 4  # every SDAR / TraDo release (model cards, JetEngine, eval configs)

# config.json keys that change the maths and that we do not implement, with the released value
REQUIRED = {"use_sliding_window": False, "attention_bias": False, "hidden_act": "silu", "rope_scaling": None}


def matches(config: dict) -> bool:
    return (config.get("model_type") == "sdar" or "SDARForCausalLM" in (config.get("architectures") or [])
            or config.get("dlm_family") == NAME)  # a tiny block model dlmrl built and saved (Qwen3 layout)


def to_native(name: str) -> str | None:
    return name  # Qwen3's names exactly


def to_upstream(name: str) -> str | None:
    return name


class SDARForBlockDiffusion(BlockCausalForward, Qwen3ForCausalLM):
    """Qwen3 under SDAR's block-causal attention (rollouts/families/block.py: the masks it takes)."""

    block_family = NAME
    default_block_length = BLOCK_LENGTH


MODEL_CLASS = SDARForBlockDiffusion


def native_config(config: dict, where: str = "config.json") -> Qwen3Config:
    """The Qwen3Config equivalent to an SDAR config.json (plus `block_length`)."""
    require(config, REQUIRED, NAME, where)
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        native = Qwen3Config(
            vocab_size=int(config["vocab_size"]), hidden_size=hidden, intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 1e6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)), attention_dropout=0.0,
            pad_token_id=config.get("pad_token_id"), eos_token_id=config.get("eos_token_id"),
            bos_token_id=config.get("bos_token_id"))
    except KeyError as exc:
        raise ModelLoadError(f"{where}: missing key '{exc.args[0]}' (an sdar config needs hidden_size, "
                             f"num_attention_heads, num_hidden_layers, intermediate_size, vocab_size)") from None
    native.block_length = int(config.get("block_length") or BLOCK_LENGTH)
    native.mask_token_id = config.get("mask_token_id")
    native.is_causal = False  # the block-causal mask is built here, never transformers' causal one
    return native
