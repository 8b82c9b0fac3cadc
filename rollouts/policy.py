"""How to get logits from a canvas, for any supported DLM family.

The sampler and the trainer both call `DiffusionPolicy.logits`, so "what the model
predicts at each position" has exactly one definition. Prompts are left-padded:
padding is hidden by the attention mask and positions count only real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenIds:
    """The special ids a diffusion policy needs, read from the tokenizer."""

    mask: int
    pad: int
    eos: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "TokenIds":
        missing = [name for name in ("mask_token_id", "pad_token_id", "eos_token_id")
                   if getattr(tokenizer, name, None) is None]
        if missing:
            raise ValueError(f"tokenizer has no {', '.join(missing)}; a DLM tokenizer needs mask, pad and eos tokens")
        return cls(mask=tokenizer.mask_token_id, pad=tokenizer.pad_token_id, eos=tokenizer.eos_token_id)


class DiffusionPolicy:
    """A loaded DLM plus its special ids: canvas (B, N) -> logits (B, N, V).

    `shift_logits=True` is for Dream-style models whose output at i predicts token i+1.
    """

    def __init__(self, model: torch.nn.Module, ids: TokenIds, shift_logits: bool = False):
        self.model = model
        self.ids = ids
        self.shift_logits = shift_logits

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        logits = out.logits
        if self.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits
