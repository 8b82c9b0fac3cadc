"""What block-diffusion families share: attention causal across blocks of `block_length` tokens and
bidirectional within a block (query i may attend key j iff block(j) <= block(i)), blocks counted from
each row's first real token, so left padding changes nothing.

`BlockCausalForward` is mixed into a stock transformers model; its forward takes
  - no mask: the block-causal mask of the whole sequence;
  - a 2-D padding mask (what the policy adapter passes, position ids counting real tokens):
    block-causal over the real tokens, padding never attended;
  - the upstream masks unchanged: a (B or 1, L, L) {0, 1} "may attend" mask (SDAR's), or any 4-D
    (B, 1, L, L) mask, boolean or additive (LLaDA2's {0, -inf}).
"""

from __future__ import annotations

import torch

from rollouts.families.native import ModelLoadError


def block_causal(positions: torch.Tensor, block_length: int, keep: torch.Tensor | None = None,
                 key_positions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, Q, K) bool "may attend" mask from the queries' (B, Q) positions and the keys' (B, K)
    (default: the queries themselves); keys where `keep` is False (padding) are never visible."""
    key_positions = positions if key_positions is None else key_positions
    allowed = (positions // block_length)[:, None, :, None] >= (key_positions // block_length)[:, None, None, :]
    if keep is not None:
        allowed = allowed & keep[:, None, None, :].bool()
    return allowed


class BlockCausalForward:
    """Mixin for a `*ForCausalLM`: builds or normalises the block-causal mask, then the stock forward.

    With a KV cache (`cache`, holding the keys/values of the first p positions) the mask covers the
    cached keys and then the fed ones: a 2-D padding mask of length p + q, or a (B, 1, q, p + q)
    mask. Queries see a cached key by the same rule as any other key, so a cache of finished blocks
    (rollouts/kv_cache.py, `cache: block`) gives exactly the logits of the whole sequence."""

    block_family = "block"
    default_block_length = 32

    def attention_block_length(self) -> int:
        return int(getattr(self.config, "block_length", None) or self.default_block_length)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, logits_to_keep=0, **kwargs):
        tokens = input_ids if input_ids is not None else inputs_embeds
        batch, length, device = tokens.shape[0], tokens.shape[1], tokens.device
        past = cache.get_seq_length() if cache is not None else 0
        keys = past + length
        if attention_mask is None or attention_mask.dim() == 2:
            if attention_mask is not None and attention_mask.shape[-1] != keys:
                raise ModelLoadError(f"{self.block_family}: a padding mask of length {attention_mask.shape[-1]} for "
                                     f"{past} cached + {length} fed positions (expected {keys})")
            key_positions = ((attention_mask.long().cumsum(-1) - 1).clamp(min=0) if attention_mask is not None
                             else torch.arange(keys, device=device).expand(batch, -1))
            if position_ids is None:
                position_ids = key_positions[:, past:]
            attention_mask = block_causal(position_ids, self.attention_block_length(), attention_mask, key_positions)
        elif attention_mask.dim() == 3 and attention_mask.shape[-2:] == (length, keys):
            attention_mask = attention_mask.bool()[:, None].expand(batch, -1, -1, -1)
        elif attention_mask.dim() != 4 or attention_mask.shape[-2:] != (length, keys):
            raise ModelLoadError(f"{self.block_family}: attention_mask of shape {list(attention_mask.shape)} is neither a "
                                 f"padding mask (B, L), a (B, L, L) nor a (B, 1, L, L) mask for L = {length}"
                                 + (f" (with {past} cached positions: (B, 1, {length}, {keys}))" if past else ""))
        if attention_mask.dtype == torch.bool and self.config._attn_implementation == "eager":
            attention_mask = torch.zeros(attention_mask.shape, dtype=self.dtype, device=device).masked_fill(
                ~attention_mask, torch.finfo(self.dtype).min)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)
