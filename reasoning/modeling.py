"""Models and tokenizers: the tiny built-in DLM, loading by path, and LoRA.

The tiny default is a stock transformers Llama with `is_causal=False` (bidirectional
attention, LLaDA-like) and a character-level fast tokenizer. No custom modeling code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from reasoning.schema import ConfigError, setting_error, suggest
from rollouts.families import FAMILIES, ModelLoadError, load_pretrained, load_tokenizer, lora_exclude

SPECIAL_TOKENS = ["[PAD]", "[MASK]", "[EOS]", "[UNK]"]
ANSWER_TOKENS = ["<answer>", "</answer>", "<think>", "</think>"]  # one token each, not characters
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
)


@dataclass
class TinyModelConfig:
    """Shape of the built-in tiny bidirectional Llama (~0.9 M parameters by default)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 256

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'model.tiny.{key}': expected >= 1, got {getattr(self, key)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"config key 'model.tiny.hidden_size': {self.hidden_size} is not divisible by "
                              f"model.tiny.num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            raise ConfigError(f"config key 'model.tiny.hidden_size': the head size hidden_size / num_heads = "
                              f"{self.hidden_size // self.num_heads} must be even (rotary position embeddings)")


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # parameters that are not Linear layers, by name suffix — an MoE's stacked experts, e.g.
    # [mlp.experts.gate_up_proj, mlp.experts.down_proj] for llada2 (peft's target_parameters)
    target_parameters: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"config key 'model.lora.r': expected >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"config key 'model.lora.dropout': expected in [0, 1), got {self.dropout}")


@dataclass
class ModelConfig:
    # auto: read from the checkpoint's config.json (rollouts/families); remote only when asked for
    family: str = "auto"  # or a registered family: llada, dream, diffusion_gemma, masked_lm, bidirectional, remote
    path: str | None = None  # a model snapshot or save_pretrained directory; None = build the tiny default
    trust_remote_code: bool = False  # family remote: run the modeling code shipped with the checkpoint
    gradient_checkpointing: bool = False  # recompute activations in backward (long canvases on a GPU)
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    shift_logits: bool | None = None  # the logit at i predicts token i+1; None = the family's own (Dream: yes)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if self.family != "auto" and self.family not in FAMILIES:
            raise ConfigError(f"config key 'model.family': expected one of auto, {', '.join(FAMILIES)}, got "
                              f"{self.family!r}{suggest(self.family, FAMILIES) if len(str(self.family)) > 2 else ''}")


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII + newline, with DLM special tokens."""
    chars = ["\n"] + [chr(i) for i in range(32, 127)]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + chars)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", mask_token="[MASK]", eos_token="[EOS]", unk_token="[UNK]"
    )
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in ANSWER_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(cfg: TinyModelConfig, tokenizer) -> LlamaForCausalLM:
    """A randomly initialised bidirectional Llama sized for CPU training."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    config.is_causal = False
    config.mask_token_id = tokenizer.mask_token_id
    return LlamaForCausalLM(config)


def build_tiny_block_model(cfg: TinyModelConfig, tokenizer, block_length: int | None) -> torch.nn.Module:
    """The tiny model's sizes as a block-diffusion model: SDAR's layers (Qwen3) under block-causal
    attention (rollouts/families/sdar.py), tied embeddings as the tiny Llama has."""
    from rollouts.families import sdar

    config = sdar.native_config({
        "vocab_size": len(tokenizer), "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads, "max_position_embeddings": cfg.max_positions,
        "tie_word_embeddings": True, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
        "block_length": block_length})
    config.mask_token_id = tokenizer.mask_token_id
    config.dlm_family = sdar.NAME
    return sdar.MODEL_CLASS(config)


def load_model(cfg: ModelConfig, attention_block: int | None = None):
    """(model, tokenizer) for a model block: the tiny default or a local directory.
    `attention_block`: a block-diffusion model's attention block (rollout.block_length; None: the
    model's own); ignored by a model that attends over the whole canvas."""
    dtype = getattr(torch, cfg.dtype)
    if cfg.path is None:
        tokenizer = build_char_tokenizer()
        if cfg.family == "sdar":  # the tiny sizes as a block-diffusion model
            return build_tiny_block_model(cfg.tiny, tokenizer, attention_block).to(dtype), tokenizer
        if cfg.family not in ("auto", "bidirectional"):
            raise ConfigError(f"config key 'model.path': family '{cfg.family}' needs a checkpoint directory "
                              f"(only the tiny default is built from a config: bidirectional, or sdar)")
        return build_tiny_model(cfg.tiny, tokenizer).to(dtype), tokenizer
    if not os.path.isfile(os.path.join(cfg.path, "config.json")):
        raise ConfigError(f"config key 'model.path': '{cfg.path}' has no config.json (not a save_pretrained directory)")
    try:
        model = load_pretrained(cfg.path, dtype, cfg.family, cfg.trust_remote_code, attention_block)
        tokenizer = load_tokenizer(cfg.path, cfg.trust_remote_code)
    except ModelLoadError as exc:
        raise (setting_error(exc, "model") or ConfigError(str(exc))) from None
    return model, tokenizer


def model_family(model: torch.nn.Module) -> str:
    """The family a loaded model was resolved to (`model.family: auto` -> e.g. 'llada')."""
    return getattr(model.config, "dlm_family", None) or "bidirectional"


def peft_lora_config(cfg: LoraConfig, family: str = "bidirectional"):
    """Our `model.lora` block as a peft LoraConfig (shared by trainer and rollout workers)."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), exclude_modules=lora_exclude(family),
                          target_parameters=list(cfg.target_parameters) or None,
                          bias="none")


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Activation checkpointing through transformers; inputs must require grad for a frozen base + LoRA."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError("config key 'model.gradient_checkpointing': this model does not support it")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()


def check_lora_targets(model: torch.nn.Module, cfg: LoraConfig) -> None:
    """Before anything is written: the LoRA targets name modules / parameters the model has."""
    if not cfg.enabled:
        return
    names = [n for n, _ in model.named_modules() if n]
    if not any(n == t or n.endswith("." + t) for n in names for t in cfg.target_modules):
        short = sorted({n.rsplit(".", 1)[-1] for n in names if not n[-1].isdigit()})
        raise ConfigError(f"config key 'model.lora.target_modules': {list(cfg.target_modules)} match no module "
                          f"of the model (its module names include: {', '.join(short[:12])})")
    for target in cfg.target_parameters:  # peft skips a name that matches nothing; we do not
        if not isinstance(target, str) or not target.strip() or not any(
                n == target or n.endswith("." + target) for n, _ in model.named_parameters()):
            stacked = sorted({n.split(".", 3)[-1] for n, p in model.named_parameters() if p.dim() == 3})  # MoE experts
            raise ConfigError(f"config key 'model.lora.target_parameters': '{target}' is no parameter of the model "
                              f"(stacked ones it has: {', '.join(stacked[:6]) or 'none'})")


def apply_lora(model: torch.nn.Module, cfg: LoraConfig, family: str = "bidirectional") -> torch.nn.Module:
    """Wrap with a peft LoRA adapter when enabled (only adapter weights then train)."""
    if not cfg.enabled:
        return model
    from peft import get_peft_model

    check_lora_targets(model, cfg)
    try:
        return get_peft_model(model, peft_lora_config(cfg, family))
    except ValueError as exc:  # what check_lora_targets cannot see, e.g. every match excluded by the family
        if "target" not in str(exc).lower():
            raise
        key, value = (("target_parameters", cfg.target_parameters) if "target_parameters" in str(exc)
                      else ("target_modules", cfg.target_modules))
        raise ConfigError(f"config key 'model.lora.{key}': {list(value)}: {str(exc).splitlines()[0][:300]}") from None


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
