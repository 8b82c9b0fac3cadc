"""LLaDA2.0 / LLaDA2.1-mini snapshots (`model_type: llada2_moe`, Ling-2.0 / BailingMoeV2 layout), run
natively: a block-diffusion mixture of experts.

The maths is transformers' own `Glm4MoeForCausalLM` exactly: GQA with per-head RMSNorm on q and k,
RoPE on the first head_dim × partial_rotary_factor dims (rotate-half within them), a dense MLP in
the first `first_k_dense_replace` layers, then a sigmoid router whose choice adds `expert_bias`
(grouped: per group the sum of its top-2 biased scores, the best `topk_group` groups, then the
best `num_experts_per_tok` experts among them), weights from the *unbiased* scores normalised to
1 and times `routed_scaling_factor`, plus an unweighted shared expert. The snapshot's names
differ and two of its tensors are fused differently, so loading converts the state dict:

    model.word_embeddings                    -> model.embed_tokens
    attention.query_key_value  (q|k|v rows)  -> self_attn.{q,k,v}_proj
    attention.query_/key_layernorm           -> self_attn.{q,k}_norm
    attention.dense                          -> self_attn.o_proj
    mlp.gate.expert_bias (a buffer)          -> mlp.gate.e_score_correction_bias (a buffer: never trained)
    mlp.experts.E.{gate,up}_proj / down_proj -> mlp.experts.gate_up_proj[E] / down_proj[E]

Attention is block-causal (rollouts/families/block.py), block length 32 by default
(`block_length` in config.json or `rollout.block_length` overrides it). config.json holds only the
pad id; eos (`<|endoftext|>`) and mask (`<|mask|>`) ids come from the tokenizer. The snapshot's
modeling code is never imported.
"""

from __future__ import annotations

import re

import torch
from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

from rollouts.families.block import BlockCausalForward
from rollouts.families.native import ModelLoadError, checkpoint_tensors, rename, require, weight_files

NAME = "llada2"
SHIFT_LOGITS = False
CONFIDENCE = "max_prob"  # its generate(): the probability of the chosen token
BLOCK_LENGTH = 32  # generate()'s default

# config.json settings that change the maths and that we do not implement, with the released value
REQUIRED = {"score_function": "sigmoid", "use_rmsnorm": True, "norm_head": False, "norm_softmax": False,
            "use_bias": False, "using_split_qkv_in_self_attention": False, "use_sliding_window": False,
            "hidden_act": "silu", "rope_scaling": None}

RENAMES = [  # (upstream, native); {i} a layer index, {e} an expert index
    ("model.word_embeddings.weight", "model.embed_tokens.weight"),
    ("model.norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("model.layers.{i}.attention.query_layernorm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
    ("model.layers.{i}.attention.key_layernorm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
    ("model.layers.{i}.attention.dense.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("model.layers.{i}.mlp.gate.weight", "model.layers.{i}.mlp.gate.weight"),
    ("model.layers.{i}.mlp.gate.expert_bias", "model.layers.{i}.mlp.gate.e_score_correction_bias"),
    *[(f"model.layers.{{i}}.mlp.{p}.weight", f"model.layers.{{i}}.mlp.{p}.weight")
      for p in ("gate_proj", "up_proj", "down_proj")],
    *[(f"model.layers.{{i}}.mlp.shared_experts.{p}.weight", f"model.layers.{{i}}.mlp.shared_experts.{p}.weight")
      for p in ("gate_proj", "up_proj", "down_proj")],
]
QKV = re.compile(r"^model\.layers\.(\d+)\.attention\.query_key_value\.weight$")
EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def matches(config: dict) -> bool:
    return config.get("model_type") == "llada2_moe" or "LLaDA2MoeModelLM" in (config.get("architectures") or [])


class LLaDA2ForBlockDiffusion(BlockCausalForward, Glm4MoeForCausalLM):
    """Ling-2.0 MoE (as Glm4Moe) under block-causal attention."""

    block_family = NAME
    default_block_length = BLOCK_LENGTH


MODEL_CLASS = LLaDA2ForBlockDiffusion


def native_config(config: dict, where: str = "config.json") -> Glm4MoeConfig:
    """The Glm4MoeConfig equivalent to a LLaDA2 config.json (plus `block_length`)."""
    require(config, REQUIRED, NAME, where)
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        native = Glm4MoeConfig(
            vocab_size=int(config["vocab_size"]), hidden_size=hidden, intermediate_size=int(config["intermediate_size"]),
            num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or heads),
            max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            rope_parameters={"rope_type": "default", "rope_theta": float(config.get("rope_theta", 600000)),
                             "partial_rotary_factor": float(config.get("partial_rotary_factor", 0.5))},
            attention_bias=bool(config.get("use_qkv_bias", False)), attention_dropout=0.0,
            moe_intermediate_size=int(config["moe_intermediate_size"]),
            num_experts_per_tok=int(config["num_experts_per_tok"]), n_shared_experts=int(config.get("num_shared_experts", 1)),
            n_routed_experts=int(config["num_experts"]), routed_scaling_factor=float(config.get("routed_scaling_factor", 1.0)),
            n_group=int(config.get("n_group", 1)), topk_group=int(config.get("topk_group", 1)),
            first_k_dense_replace=int(config.get("first_k_dense_replace", 0)),
            norm_topk_prob=True,  # upstream normalises the chosen weights whatever norm_topk_prob says
            use_qk_norm=bool(config.get("use_qk_norm", True)),  # absent from config.json: True by default upstream
            pad_token_id=config.get("pad_token_id"), eos_token_id=config.get("eos_token_id"),
            bos_token_id=config.get("bos_token_id"))
    except KeyError as exc:
        raise ModelLoadError(f"{where}: missing key '{exc.args[0]}' (a llada2_moe config needs hidden_size, "
                             f"num_attention_heads, num_hidden_layers, intermediate_size, moe_intermediate_size, "
                             f"num_experts, num_experts_per_tok, vocab_size)") from None
    native.head_dim = int(config.get("head_dim") or hidden // heads)
    native.block_length = int(config.get("block_length") or BLOCK_LENGTH)
    native.mask_token_id = config.get("mask_token_id")
    native.is_causal = False  # the block-causal mask is built here, never transformers' causal one
    return native


def to_native_state(upstream: dict[str, torch.Tensor], native: Glm4MoeConfig, where: str) -> dict[str, torch.Tensor]:
    """The snapshot's state dict under Glm4Moe's names: q/k/v split from the fused rows, experts stacked."""
    head_dim, heads, kv = native.head_dim, native.num_attention_heads, native.num_key_value_heads
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, tensor in upstream.items():
        if (match := QKV.match(name)) is not None:
            q, k, v = tensor.split([heads * head_dim, kv * head_dim, kv * head_dim], dim=0)
            for part, value in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"model.layers.{match.group(1)}.self_attn.{part}.weight"] = value
        elif (match := EXPERT.match(name)) is not None:
            experts.setdefault((int(match.group(1)), match.group(3)), {})[int(match.group(2))] = tensor
        elif (target := rename(name, RENAMES, 0)) is not None:
            out[target] = tensor
        else:
            raise ModelLoadError(f"{where}: tensor '{name}' is not part of a llada2 model (extra tensor)")
    layers = sorted({layer for layer, _ in experts})
    for layer in layers:
        parts = {}
        for proj in ("gate_proj", "up_proj", "down_proj"):
            found = experts.get((layer, proj), {})
            for e in range(native.n_routed_experts):
                if e not in found:
                    raise ModelLoadError(f"{where}: the weights lack expert tensor "
                                         f"'model.layers.{layer}.mlp.experts.{e}.{proj}.weight'")
            parts[proj] = torch.stack([found[e] for e in range(native.n_routed_experts)])
        out[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.cat([parts["gate_proj"], parts["up_proj"]], 1)
        out[f"model.layers.{layer}.mlp.experts.down_proj"] = parts["down_proj"]
    return out


def to_upstream_state(state: dict[str, torch.Tensor], native: Glm4MoeConfig) -> dict[str, torch.Tensor]:
    """The inverse of `to_native_state`: q/k/v fused again, the stacked experts one tensor each."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if (match := re.match(r"^model\.layers\.(\d+)\.self_attn\.q_proj\.weight$", name)) is not None:
            prefix = f"model.layers.{match.group(1)}.self_attn"
            out[f"model.layers.{match.group(1)}.attention.query_key_value.weight"] = torch.cat(
                [state[f"{prefix}.{part}.weight"] for part in ("q_proj", "k_proj", "v_proj")], 0)
        elif (match := re.match(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$", name)) is not None:
            layer, size = match.group(1), native.moe_intermediate_size
            parts = ({"gate_proj": tensor[:, :size], "up_proj": tensor[:, size:]} if match.group(2) == "gate_up_proj"
                     else {"down_proj": tensor})
            for proj, stacked in parts.items():
                for e in range(stacked.shape[0]):
                    out[f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight"] = stacked[e]
        elif re.match(r"^model\.layers\.\d+\.self_attn\.[kv]_proj\.weight$", name) is None:
            upstream = rename(name, RENAMES, 1)
            if upstream is None:
                raise ModelLoadError(f"export: no original name for tensor '{name}'")
            out[upstream] = tensor
    return out


def load_snapshot(path: str, native: Glm4MoeConfig, dtype: torch.dtype) -> torch.nn.Module:
    """Read every tensor (headers checked first), convert, and load strictly: a missing, extra or
    misshapen tensor is a ModelLoadError naming it."""
    from safetensors import safe_open

    checkpoint_tensors(path)  # every header readable, no file cut short
    upstream = {}
    for file in weight_files(path):
        with safe_open(file, "pt") as fh:
            for name in fh.keys():
                upstream[name] = fh.get_tensor(name)
    state = to_native_state(upstream, native, path)
    with torch.device("meta"):
        expected = {n: tuple(t.shape) for n, t in MODEL_CLASS(native).state_dict().items()}
    if native.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    for name in sorted(expected):
        if name not in state:
            raise ModelLoadError(f"{path}: the weights lack tensor '{name}' (native name) the config implies")
        if tuple(state[name].shape) != expected[name]:
            raise ModelLoadError(f"{path}: tensor '{name}' (native name) has shape {list(state[name].shape)} but "
                                 f"config.json implies {list(expected[name])}")
    model = MODEL_CLASS(native)
    model.load_state_dict(state, strict=not native.tie_word_embeddings)
    model = model.to(dtype)
    for module in model.modules():  # the router stays in float32, as upstream (router_dtype fp32)
        if hasattr(module, "e_score_correction_bias"):
            module.float()
    model.config.dlm_family = NAME
    return model.eval()
