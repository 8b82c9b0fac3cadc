"""transformers' native DiffusionGemma (`DiffusionGemmaForBlockDiffusion`): the prompt goes through
its causal encoder, the canvas through its bidirectional decoder (see `DiffusionGemmaPolicy`)."""

from __future__ import annotations

import torch

from rollouts.families.native import ModelLoadError
from rollouts.policy import DiffusionPolicy, position_ids

NAME = "diffusion_gemma"
SHIFT_LOGITS = False
# its vision tower names its (clippable, non-Linear) projections q_proj/k_proj/... too, and text RL
# never uses it: LoRA must not wrap them
LORA_EXCLUDE = r".*\.(vision_tower|embed_vision)\..*"


def matches(config: dict) -> bool:
    return config.get("model_type") == "diffusion_gemma"


def load(path: str, config: dict, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    from transformers import DiffusionGemmaForBlockDiffusion

    if not matches(config):
        raise ModelLoadError(f"model setting 'family': '{path}' holds a '{config.get('model_type')}' model, "
                             f"not diffusion_gemma")
    return DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=dtype)


class DiffusionGemmaPolicy(DiffusionPolicy):
    """The `diffusion_gemma` family: transformers' DiffusionGemmaForBlockDiffusion.

    That model splits the canvas in two: the prompt goes through its (causal) encoder
    into a KV cache, and the answer canvas through its bidirectional decoder, which
    attends to the cache and to the whole canvas. Positions continue after each row's
    real prompt tokens, so left padding changes nothing. Unknown answer positions hold
    the tokenizer's [MASK] like every other family (DiffusionGemma itself starts from
    random tokens; a [MASK] canvas is what our sampler and replay define).

    Latent thinking maps to the model's own self-conditioning: pass k feeds the previous
    pass's answer logits as `self_conditioning_logits` (`latent_mix` is not used — the
    model learned its own mixing). Still a deterministic function of θ and the canvas.
    """

    @property
    def supports_kv_cache(self) -> bool:
        return False  # it caches its prompt itself (encoder); the sampler's block caches do not apply

    def logits(self, *, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None, keep: int | None = None) -> torch.Tensor:
        """Logits (B, keep, V) of the last `keep` positions of `input_ids` (the canvas)."""
        if input_ids is None or keep is None:
            raise ValueError("diffusion_gemma: logits need input_ids and keep (the canvas length); "
                             "embedding inputs are not supported")
        return self._decode(input_ids[:, :-keep], attention_mask[:, :-keep], input_ids[:, -keep:])[0]

    def _decode(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, canvas: torch.Tensor,
                prompt_cache=None, self_conditioning: torch.Tensor | None = None):
        """(logits, prompt KV cache); the encoder runs only when no cache is given (the decoder
        reads the cache and never writes it, so latent passes share one encoding)."""
        prompt_mask = prompt_mask.long()
        out = self.model(
            input_ids=None if prompt_cache is not None else prompt_ids, attention_mask=prompt_mask,
            position_ids=position_ids(prompt_mask), past_key_values=prompt_cache,
            decoder_input_ids=canvas,
            decoder_attention_mask=torch.cat([prompt_mask, torch.ones_like(canvas)], 1),
            decoder_position_ids=prompt_mask.sum(-1, keepdim=True) + torch.arange(canvas.shape[1], device=canvas.device),
            self_conditioning_logits=self_conditioning, use_cache=True)
        return out.logits, out.past_key_values

    def step_log_probs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, answer: torch.Tensor,
                       temperature: float, latent_steps: int = 0, latent_mix: float = 0.5) -> torch.Tensor:
        logits, cache = self._decode(prompt_ids, prompt_mask, answer)
        for _ in range(latent_steps):
            logits, _ = self._decode(prompt_ids, prompt_mask, answer, cache, self_conditioning=logits)
        return self.answer_log_probs(logits, temperature)


POLICY = DiffusionGemmaPolicy
