"""SDAR / TraDo snapshots (`model_type: sdar`, `SDARForCausalLM`), run natively: block diffusion.

SDAR's weights and layers are Qwen3's exactly (per-head q/k RMSNorm, GQA, `head_dim` that need not
be hidden/heads, untied lm head); only the attention differs: causal across blocks of
`block_length` tokens and bidirectional within a block — query i may attend key j iff
j // block_length <= i // block_length (positions counted from the sequence's first real token,
so the prompt's last partial block shares a block with the first answer tokens). We build
transformers' own `Qwen3ForCausalLM` from the snapshot's config values and give it that mask:

  - no mask: the block-causal mask of the whole sequence;
  - a 2-D padding mask (what the policy adapter passes, with position ids counting real tokens):
    block-causal over the real tokens, padding never attended;
  - the upstream masks unchanged: SDAR's float {0, 1} (B or 1, L, L) "may attend" mask, or any
    4-D (B, 1, L, L) mask (bool, or additive float).

config.json has no block length (every SDAR / TraDo release uses 4) and no mask id (the tokenizer's
`<|MASK|>`): `model.block_length` (config attribute `block_length`) overrides the 4.
The snapshot's modeling code is never imported.
"""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from rollouts.families.native import ModelLoadError

NAME = "sdar"
SHIFT_LOGITS = False
CONFIDENCE = "max_prob"  # SDAR's samplers: the probability of the (argmax / sampled) token
BLOCK_LENGTH = 4  # every SDAR / TraDo release (model cards, JetEngine, eval configs)

# config.json keys that change the maths and that we do not implement, with the released value
REQUIRED = {"use_sliding_window": False, "attention_bias": False, "hidden_act": "silu", "rope_scaling": None}


def matches(config: dict) -> bool:
    return config.get("model_type") == "sdar" or "SDARForCausalLM" in (config.get("architectures") or [])


def to_native(name: str) -> str | None:
    return name  # Qwen3's names exactly


def to_upstream(name: str) -> str | None:
    return name


def block_causal(positions: torch.Tensor, block_length: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, L, L) bool "may attend" mask: key j visible from query i iff block(j) <= block(i),
    block = position // block_length; keys where `keep` (B, L) is False (padding) are never visible."""
    block = positions // block_length
    allowed = block[:, None, :, None] >= block[:, None, None, :]
    if keep is not None:
        allowed = allowed & keep[:, None, None, :].bool()
    return allowed


class SDARForBlockDiffusion(Qwen3ForCausalLM):
    """Qwen3 under SDAR's block-causal attention (see the module docstring for the masks it takes)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, **kwargs):
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        device = (input_ids if input_ids is not None else inputs_embeds).device
        block_length = int(getattr(self.config, "block_length", None) or BLOCK_LENGTH)
        if attention_mask is None or attention_mask.dim() == 2:
            if position_ids is None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) if attention_mask is not None \
                    else torch.arange(length, device=device).expand(batch, -1)
            attention_mask = block_causal(position_ids, block_length, attention_mask)
        elif attention_mask.dim() == 3:  # SDAR's own (B or 1, L, L) {0, 1} mask
            attention_mask = attention_mask.bool()[:, None].expand(batch, -1, -1, -1)
        elif attention_mask.dim() != 4 or attention_mask.shape[-2:] != (length, length):
            raise ModelLoadError(f"sdar: attention_mask of shape {list(attention_mask.shape)} is neither a padding "
                                 f"mask (B, L), SDAR's (B, L, L) nor a (B, 1, L, L) mask for L = {length}")
        if attention_mask.dtype == torch.bool and attention_mask.dim() == 4 and self.config._attn_implementation == "eager":
            attention_mask = torch.zeros(attention_mask.shape, dtype=self.dtype, device=device).masked_fill(
                ~attention_mask, torch.finfo(self.dtype).min)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               inputs_embeds=inputs_embeds, **kwargs)


MODEL_CLASS = SDARForBlockDiffusion


def native_config(config: dict, where: str = "config.json") -> Qwen3Config:
    """The Qwen3Config equivalent to an SDAR config.json (plus `block_length`)."""
    for key, value in REQUIRED.items():
        if key in config and config[key] != value:
            raise ModelLoadError(f"{where}: '{key}' = {config[key]!r} is not supported by the native sdar family "
                                 f"(expected {value!r})")
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        native = Qwen3Config(
            vocab_size=int(config["vocab_size"]), hidden_size=hidden, intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=float(config.get("rope_theta", 1e6)),
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
