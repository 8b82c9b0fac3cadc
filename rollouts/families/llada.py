"""LLaDA-8B-Instruct / LLaDA-1.5 snapshots (`model_type: llada`), run natively.

LLaDA is a Llama-style transformer in OLMo's weight names, with bidirectional attention.
We build transformers' own `LlamaForCausalLM` with `is_causal=False` from the snapshot's
config values and map the names (`blocks.N.attn_out` -> `layers.N.self_attn.o_proj`, the
SwiGLU's `ff_proj`/`up_proj`/`ff_out` -> `gate_proj`/`up_proj`/`down_proj`, `ln_f` -> `norm`,
the separate lm head `transformer.ff_out` -> `lm_head`). The snapshot's modeling code is
never imported. Options LLaDA checkpoints do not use (ALiBi, QK layer norm, logit scaling,
...) are refused by name rather than silently ignored. Dropout is not modelled: dlmrl
samples and replays with dropout off, so the recorded path is a function of θ alone.
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from rollouts.families.native import ModelLoadError, rename

NAME = "llada"
SHIFT_LOGITS = False
CONFIDENCE = "chosen_prob"  # its reference sampler's rule (`confidence: auto`)
MODEL_CLASS = LlamaForCausalLM

# (upstream template, native template); {i} is the layer index
NAMES = [
    ("model.transformer.wte.weight", "model.embed_tokens.weight"),
    ("model.transformer.ln_f.weight", "model.norm.weight"),
    ("model.transformer.ff_out.weight", "lm_head.weight"),
    *[(f"model.transformer.blocks.{{i}}.{p}.{kind}", f"model.layers.{{i}}.self_attn.{p}.{kind}")
      for p in ("q_proj", "k_proj", "v_proj") for kind in ("weight", "bias")],
    *[(f"model.transformer.blocks.{{i}}.attn_out.{kind}", f"model.layers.{{i}}.self_attn.o_proj.{kind}")
      for kind in ("weight", "bias")],
    *[(f"model.transformer.blocks.{{i}}.{up}.{kind}", f"model.layers.{{i}}.mlp.{native}.{kind}")
      for up, native in (("ff_proj", "gate_proj"), ("up_proj", "up_proj"), ("ff_out", "down_proj"))
      for kind in ("weight", "bias")],
    ("model.transformer.blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("model.transformer.blocks.{i}.ff_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
]

# config.json settings we do not implement, with the value every released LLaDA uses
REQUIRED = {"block_type": "llama", "alibi": False, "rope": True, "attention_layer_norm": False,
            "input_emb_norm": False, "scale_logits": False, "layer_norm_type": "rms", "activation_type": "silu",
            "include_qkv_bias": False, "clip_qkv": None, "layer_norm_with_affine": True}


def matches(config: dict) -> bool:
    return config.get("model_type") == "llada" or "LLaDAModelLM" in (config.get("architectures") or [])


def to_native(name: str) -> str | None:
    return rename(name, NAMES, 0)


def to_upstream(name: str) -> str | None:
    return rename(name, NAMES, 1)


def native_config(config: dict, where: str = "config.json") -> LlamaConfig:
    """The LlamaConfig (bidirectional) equivalent to a LLaDA config.json."""
    for key, value in REQUIRED.items():
        if key in config and config[key] != value and not (value is None and not config[key]):
            raise ModelLoadError(f"{where}: '{key}' = {config[key]!r} is not supported by the native llada "
                                 f"family (expected {value!r})")
    try:
        d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
        n_kv = 1 if config.get("multi_query_attention") else int(config.get("n_kv_heads") or n_heads)
        hidden = config.get("mlp_hidden_size") or int(config.get("mlp_ratio", 4)) * d_model
        native = LlamaConfig(
            vocab_size=int(config.get("embedding_size") or config["vocab_size"]), hidden_size=d_model,
            intermediate_size=int(hidden), num_hidden_layers=int(config["n_layers"]), num_attention_heads=n_heads,
            num_key_value_heads=n_kv, max_position_embeddings=int(config.get("max_sequence_length", 4096)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-5)), rope_theta=float(config.get("rope_theta", 10000.0)),
            tie_word_embeddings=bool(config.get("weight_tying", False)),
            attention_bias=bool(config.get("include_bias", False)), mlp_bias=bool(config.get("include_bias", False)),
            attention_dropout=0.0, pad_token_id=config.get("pad_token_id"), eos_token_id=config.get("eos_token_id"),
            bos_token_id=config.get("bos_token_id"))
    except KeyError as exc:
        raise ModelLoadError(f"{where}: missing key '{exc.args[0]}' (a llada config needs d_model, n_heads, "
                             f"n_layers, vocab_size)") from None
    if d_model % n_heads:
        raise ModelLoadError(f"{where}: 'd_model' ({d_model}) is not divisible by 'n_heads' ({n_heads})")
    native.is_causal = False
    native.mask_token_id = config.get("mask_token_id")
    return native

