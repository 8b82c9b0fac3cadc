"""How to get logits from a canvas, for any supported DLM family.

The sampler and the trainer both call `DiffusionPolicy.step_logits`, so "what the
model predicts at each answer position" — latent thinking included — has exactly one
definition. Prompts are left-padded: padding is hidden by the attention mask and
position ids count only real tokens. The answer canvas is always the last
`gen_length` positions, so only those logits are computed (`logits_to_keep`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

# Disallowed tokens get this logit instead of -inf: their probability is exactly 0 after
# softmax, yet every log-prob, entropy and gradient stays finite.
NEG_INF = -1e9


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


def load_pretrained(path: str, dtype: torch.dtype = torch.float32, masked_lm: bool = False) -> torch.nn.Module:
    """A save_pretrained directory loaded as a DLM.

    Decoders get `is_causal=False` (transformers 5 honours it), so attention is
    bidirectional whatever the saved config says; `masked_lm=True` loads an
    `AutoModelForMaskedLM` (already bidirectional).
    """
    if masked_lm:
        return AutoModelForMaskedLM.from_pretrained(path, dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.config.is_causal = False
    return model


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


class DiffusionPolicy:
    """A loaded DLM plus its special ids: canvas -> answer-position log-probs.

    `shift_logits=True` is for Dream-style models whose output at i predicts token i+1.
    """

    def __init__(self, model: torch.nn.Module, ids: TokenIds, shift_logits: bool = False):
        self.model = model
        self.ids = ids
        self.shift_logits = shift_logits
        accepted = _forward_parameters(model)
        self._takes_positions = "position_ids" in accepted
        self._takes_keep = "logits_to_keep" in accepted

    @property
    def context_length(self) -> int | None:
        """The longest canvas the model accepts (None if its config does not say)."""
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(self, *, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None, keep: int | None = None) -> torch.Tensor:
        """Raw logits (B, keep or N, V) for a canvas given as ids or as input embeddings."""
        kwargs = {"attention_mask": attention_mask}
        if self._takes_positions:
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        extra = 1 if self.shift_logits else 0
        if keep is not None and self._takes_keep:
            kwargs["logits_to_keep"] = keep + extra
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
        logits = out.logits
        if self.shift_logits:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits if keep is None else logits[:, -keep:]

    def answer_log_probs(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """log softmax(logits / T) in float32 with [MASK] and [PAD] never proposed.

        T = 0 (greedy decoding) scores under T = 1: greedy picks the argmax, and the
        trainer needs a proper distribution to take gradients of.
        """
        logits = logits.float()
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        banned[[self.ids.mask, self.ids.pad]] = True
        logits = logits.masked_fill(banned, NEG_INF)
        return (logits / (temperature if temperature > 0 else 1.0)).log_softmax(-1)

    def step_log_probs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, answer: torch.Tensor,
                       temperature: float, latent_steps: int = 0, latent_mix: float = 0.5) -> torch.Tensor:
        """Log-probs (B, L, V) at the answer positions for one denoising step.

        With `latent_steps` K > 0 the model first thinks K times in embedding space: each
        pass feeds every masked answer position (1 - latent_mix) * e([MASK]) +
        latent_mix * E[p], the probability-weighted token embedding of the previous
        pass's beliefs, and re-predicts. Nothing is committed in between, so the result
        is a deterministic function of θ and the discrete canvas — replay recomputes it
        exactly, with gradients through every pass.
        """
        canvas = torch.cat([prompt_ids, answer], 1)
        attention = torch.cat([prompt_mask, torch.ones_like(answer)], 1)
        keep = answer.shape[1]
        logp = self.answer_log_probs(self.logits(attention_mask=attention, input_ids=canvas, keep=keep), temperature)
        if latent_steps == 0:
            return logp
        table = self.model.get_input_embeddings()
        token_embeds = table(canvas)
        masked = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), answer == self.ids.mask], 1)
        mask_embed = table.weight[self.ids.mask]
        for _ in range(latent_steps):
            beliefs = logp.exp().to(table.weight.dtype) @ table.weight  # (B, L, d)
            beliefs = torch.cat([token_embeds[:, :-keep], beliefs], 1)
            mixed = (1 - latent_mix) * mask_embed + latent_mix * beliefs
            embeds = torch.where(masked.unsqueeze(-1), mixed, token_embeds)
            logp = self.answer_log_probs(self.logits(attention_mask=attention, inputs_embeds=embeds, keep=keep), temperature)
        return logp
