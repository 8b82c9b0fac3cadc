"""How to get logits from a canvas, for any supported DLM family.

The sampler and the trainer both call `DiffusionPolicy.step_log_probs` (through
rollouts/decoding.py `step_distribution`), so "what the model predicts at each answer
position" — latent thinking included — has exactly one definition. Prompts are left-padded: padding is hidden by the attention mask and
position ids count only real tokens. The answer canvas is always the last
`gen_length` positions, so only those logits are computed (`logits_to_keep`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

# Disallowed tokens get this logit instead of -inf: their probability is exactly 0 after
# softmax, yet every log-prob, entropy and gradient stays finite.
NEG_INF = -1e9


# End-of-turn tokens of the common chat templates (Llama-3/LLaDA, ChatML/Qwen/Dream, Gemma, Phi):
# an instruct model ends its answer with one of these, so each stops an answer like EOS.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


def stop_token_ids(tokenizer, generation_config=None) -> tuple[int, ...]:
    """Every id that ends an answer: the tokenizer's EOS, each `eos_token_id` of
    generation_config.json (an int or a list), and the chat template's end-of-turn token."""
    ids = [getattr(tokenizer, "eos_token_id", None)]
    eos = getattr(generation_config, "eos_token_id", None)
    ids += list(eos) if isinstance(eos, (list, tuple)) else [eos]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids += [vocab.get(token) for token in END_OF_TURN]
    return tuple(sorted({int(i) for i in ids if i is not None}))


@dataclass
class TokenIds:
    """The special ids a diffusion policy needs. `pad` only fills left-padding (hidden by the
    attention mask), so it may equal EOS (LLaDA, Dream); `stop` ends an answer."""

    mask: int
    pad: int
    eos: int
    stop: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        self.stop = tuple(sorted(set(self.stop) | {self.eos}))
        if self.mask in self.stop:
            raise ValueError(f"the mask token id {self.mask} is also a stop token")

    @classmethod
    def from_tokenizer(cls, tokenizer, model_config=None, generation_config=None) -> "TokenIds":
        """Ids from the tokenizer, else from the model's config (LLaDA/Dream keep `mask_token_id`
        there); pad falls back to eos; stop ids as in `stop_token_ids`."""
        def pick(name: str):
            value = getattr(tokenizer, name, None)
            return value if value is not None else getattr(model_config, name, None)

        mask, eos = pick("mask_token_id"), pick("eos_token_id")
        pad = pick("pad_token_id")
        pad = eos if pad is None else pad
        missing = [name for name, value in (("mask_token_id", mask), ("eos_token_id", eos)) if value is None]
        if missing:
            raise ValueError(f"neither the tokenizer nor the model config has {', '.join(missing)}; a DLM needs "
                             f"a mask and an eos token")
        return cls(mask=int(mask), pad=int(pad), eos=int(eos), stop=stop_token_ids(tokenizer, generation_config))


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the attended tokens only (left padding shares position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a DeepSpeed engine and / or a peft wrapper."""
    model = getattr(model, "module", model)  # a DeepSpeed engine
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(base_model(model).forward).parameters)


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
        # transformers 5 names the KV cache argument `cache` (older: `past_key_values`)
        self._cache_argument = next((a for a in ("cache", "past_key_values") if a in accepted), None)

    @property
    def supports_kv_cache(self) -> bool:
        """Whether the sampler's block caches (rollouts/kv_cache.py) can drive this model."""
        return self._cache_argument is not None and self._takes_positions

    @property
    def attention_block(self) -> int | None:
        """Block-diffusion models (rollouts/families/block.py): the length of their attention blocks,
        causal across blocks and bidirectional within one. None: attention over the whole canvas."""
        base = base_model(self.model)
        return base.attention_block_length() if hasattr(base, "attention_block_length") else None

    @property
    def context_length(self) -> int | None:
        """The longest canvas the model accepts (None if its config does not say)."""
        config = self.model.config
        config = getattr(config, "text_config", None) or config
        return getattr(config, "max_position_embeddings", None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(self, *, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None, keep: int | None = None) -> torch.Tensor:
        """Raw logits (B, keep or N, V) for a canvas given as ids or as input embeddings."""
        kwargs = {"attention_mask": attention_mask}
        if self._takes_positions:
            kwargs["position_ids"] = position_ids(attention_mask)
        extra = 1 if self.shift_logits else 0
        if keep is not None and self._takes_keep:
            kwargs["logits_to_keep"] = keep + extra
        out = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)
        logits = self.shift_answer_logits(out.logits)
        return logits if keep is None else logits[:, -keep:]

    def shift_answer_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Dream-style models: the logit for position i is the output at i-1 (the first keeps its own)."""
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1) if self.shift_logits else logits

    def cached_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                       keep: int, cache=None):
        """(raw logits of the last `keep` fed tokens, KV cache): `attention_mask` covers the cached
        positions first, then the fed ones. For the sampler's block caches (rollouts/kv_cache.py)."""
        kwargs = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": True}
        if cache is not None:
            kwargs[self._cache_argument] = cache
        if self._takes_keep:
            kwargs["logits_to_keep"] = keep
        out = self.model(input_ids=input_ids, **kwargs)
        cache = getattr(out, "cache", None)
        return out.logits[:, -keep:], cache if cache is not None else out.past_key_values

    def answer_log_probs(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """log softmax(logits / T) in float32 over every token but [MASK].

        EOS stays possible also when pad == eos (LLaDA, Dream): padding is hidden by the
        attention mask, so the pad id needs no ban — banning it would forbid stopping.

        T = 0 (greedy decoding) scores under T = 1: greedy picks the argmax, and the
        trainer needs a proper distribution to take gradients of.
        """
        logits = logits.float()
        logits = logits.clone()
        logits[..., self.ids.mask] = NEG_INF
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


def make_policy(model: torch.nn.Module, tokenizer, shift_logits: bool | None = None) -> DiffusionPolicy:
    """The policy adapter for a loaded model (peft-wrapped or not), special ids from the tokenizer
    and the model's generation config. `shift_logits` None = the model family's own (Dream: yes)."""
    from rollouts.families import family_of, shifts_logits  # families build on this module

    inner = getattr(model, "module", model)  # a DeepSpeed engine's model (its own .config is DeepSpeed's)
    config = inner.config
    cls = getattr(family_of(inner), "POLICY", DiffusionPolicy)  # a family with its own way to get logits
    if shift_logits is None:
        shift_logits = shifts_logits(inner)
    ids = TokenIds.from_tokenizer(tokenizer, config, getattr(inner, "generation_config", None))
    return cls(model, ids, shift_logits)
