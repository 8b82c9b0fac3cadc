"""Model families: how a checkpoint directory becomes a DLM, one file per family.

    model = load_pretrained("path/to/LLaDA-8B-Instruct")        # family read from config.json
    tokenizer = load_tokenizer("path/to/Dream-v0-Instruct-7B")  # no remote code either

`family: auto` (the default) reads config.json: `model_type` llada / Dream /
diffusion_gemma, a `*ForMaskedLM` architecture, or a decoder saved with `is_causal: false`
(dlmrl's own). `remote` (the checkpoint's own modeling code) is only ever an explicit
opt-in. Every loaded model carries `config.dlm_family`, which the policy adapter reads.

A family is one module; everything family-specific lives there (docs/architecture.md):
    NAME            the `model.family` value
    matches(config) whether a config.json dict is this family (auto-detection)
    load(path, config, dtype, trust_remote_code) -> the model (on the tokenizer's ids)
    SHIFT_LOGITS    optional, default False: the logit at i predicts token i+1 (Dream)
    CONFIDENCE      optional, default "max_prob": the reference sampler's rule (`confidence: auto`)
    LORA_EXCLUDE    optional regex of modules LoRA must never wrap
    POLICY          optional DiffusionPolicy subclass: how to get logits from a canvas (DiffusionGemma)
`register(module)` adds one (a new file here, or a module of your own).
"""

from __future__ import annotations

import json
import os
from types import ModuleType

import torch

from rollouts.families import bidirectional, diffusion_gemma, dream, llada, llada2, masked_lm, remote, sdar
from rollouts.families.native import (INDEX_FILE, SINGLE_FILE, ModelLoadError, checkpoint_tensors, export as export_weights,
                                     load_native, read_config, renamed_state)

# auto-detection tries them in this order
FAMILIES: dict[str, ModuleType] = {module.NAME: module for module in
                                   (llada, dream, sdar, llada2, diffusion_gemma, masked_lm, bidirectional, remote)}
NATIVE = ("llada", "dream", "sdar", "llada2")  # snapshots whose own modeling code we replace by stock transformers blocks


def register(module: ModuleType, first: bool = True) -> ModuleType:
    """Make a family module selectable (`model.family: <NAME>`) and auto-detectable — tried before
    the built-in families when `first` (a specific `matches` must win over the catch-alls)."""
    for attr in ("NAME", "matches", "load"):
        if not hasattr(module, attr):
            raise ValueError(f"model family {getattr(module, '__name__', module)}: missing {attr}")
    rest = {k: v for k, v in FAMILIES.items() if k != module.NAME}
    FAMILIES.clear()
    FAMILIES.update({module.NAME: module, **rest} if first else {**rest, module.NAME: module})
    return module


def family_of(model: torch.nn.Module) -> ModuleType | None:
    """The family module a model was loaded as (its config's `dlm_family`), else the first whose
    `matches` accepts its config; None when none does."""
    config = getattr(model, "config", None)
    name = getattr(config, "dlm_family", None)
    if name in FAMILIES:
        return FAMILIES[name]
    as_dict = config.to_dict() if hasattr(config, "to_dict") else {}
    return next((m for m in FAMILIES.values() if m.matches(as_dict)), None)


def lora_exclude(family: str) -> str | None:
    """Regex of modules LoRA must never wrap in this family (None: LoRA's target list decides)."""
    return getattr(FAMILIES.get(family), "LORA_EXCLUDE", None)


def native_family_for(config: dict) -> str | None:
    """'llada' / 'dream' when config.json describes one of the natively supported snapshots."""
    return next((name for name in NATIVE if FAMILIES[name].matches(config)), None)


def detect(config: dict, path: str = "") -> str:
    """The family `auto` resolves to for this config.json, or a ModelLoadError listing the families."""
    for name, module in FAMILIES.items():
        if module.matches(config):
            return name
    what = config.get("model_type") or config.get("architectures") or "unknown"
    hint = " It ships its own modeling code (auto_map): family 'remote' with trust_remote_code: true runs it." \
        if config.get("auto_map") else " A causal LM can be run bidirectionally with family 'bidirectional'."
    raise ModelLoadError(f"{os.path.join(path, 'config.json')}: cannot tell the model family of model_type "
                         f"{what!r} (known: {', '.join(FAMILIES)}); set model.family.{hint}")


def load_pretrained(path: str, dtype: torch.dtype = torch.float32, family: str = "auto",
                    trust_remote_code: bool = False, attention_block: int | None = None) -> torch.nn.Module:
    """A model directory loaded as a DLM of `family` (default: detected from config.json).
    `attention_block`: a block-diffusion model's attention block length (None: the family's own);
    a model that attends over the whole canvas has none and ignores it."""
    if family != "auto" and family not in FAMILIES:
        raise ModelLoadError(f"model setting 'family': unknown family '{family}' "
                             f"(expected auto, {', '.join(FAMILIES)})")
    config = read_config(path)
    if family == "auto":
        family = detect(config, path)
    elif family in ("bidirectional", "masked_lm") and config.get("auto_map") and not config.get("dlm_family"):
        native = native_family_for(config)
        raise ModelLoadError(f"model setting 'family': '{path}' is a checkpoint with its own modeling code "
                             f"(auto_map); use family {native or 'remote'}" +
                             ("" if native else " with trust_remote_code: true"))
    module = FAMILIES[family]
    saved_native = family in NATIVE and config.get("dlm_family") == family and not module.matches(config)
    if saved_native:  # dlmrl's own save_pretrained of the native model (a full fine-tune's checkpoint)
        module = FAMILIES["bidirectional"]
    if family in NATIVE and not saved_native:  # a stock transformers model + the snapshot's weights, renamed
        native_config = module.native_config(config, os.path.join(path, "config.json"))
        if hasattr(module, "load_snapshot"):  # tensors that are converted, not just renamed (fused q|k|v, experts)
            model = module.load_snapshot(path, native_config, dtype)
        else:
            model = load_native(path, family, module.MODEL_CLASS, native_config, module.to_native, dtype)
    else:
        stored = (checkpoint_tensors(path)  # every safetensors header readable, no file cut short
                  if any(os.path.isfile(os.path.join(path, f)) for f in (SINGLE_FILE, INDEX_FILE)) else {})
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a failed load is explained below, not by transformers' report
        try:
            model = module.load(path, config, dtype, trust_remote_code)
        except (RuntimeError, ValueError, OSError) as exc:  # wrong shapes, truncated data, ...
            if isinstance(exc, ModelLoadError):
                raise
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(misfit(path, family, stored) or
                                 f"'{path}': its weights do not load as a {family} model ({first})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
    if getattr(model.config, "dlm_family", None) is None:
        model.config.dlm_family = family
    if getattr(model.config, "mask_token_id", None) is None and config.get("mask_token_id") is not None:
        model.config.mask_token_id = config["mask_token_id"]
    set_attention_block(model, attention_block)
    return model


def set_attention_block(model: torch.nn.Module, length: int | None) -> None:
    """Give a block-diffusion model the attention block `length` (None: keep its own); the upstream
    samplers of SDAR and LLaDA2 take the block length as a decoding argument the same way."""
    if length is None or not hasattr(model, "attention_block_length"):
        return
    if length < 1:
        raise ModelLoadError(f"an attention block needs at least 1 position, got {length}")
    model.config.block_length = length


def misfit(path: str, family: str, stored: dict) -> str | None:
    """The first stored tensor whose shape differs from what config.json implies (the skeleton
    built on the meta device, no memory), as a message; None when that cannot be told."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    try:
        config = AutoConfig.from_pretrained(path)
        auto = AutoModelForMaskedLM if family == "masked_lm" else AutoModelForCausalLM
        with torch.device("meta"):
            shapes = {n: tuple(t.shape) for n, t in auto.from_config(config).state_dict().items()}
    except Exception:  # noqa: BLE001 — no skeleton: the caller's message stands
        return None
    for name, (file, shape, _) in sorted(stored.items()):
        if name in shapes and shapes[name] != shape:
            return (f"{file}: tensor '{name}' has shape {list(shape)} but config.json implies {list(shapes[name])}; "
                    f"its weights do not load as a {family} model")
    return None


def shifts_logits(model: torch.nn.Module) -> bool:
    """Whether the model's logit at i predicts token i+1 (Dream), from the family it was loaded as."""
    family = getattr(model.config, "dlm_family", None)
    return bool(getattr(FAMILIES.get(family), "SHIFT_LOGITS", False))


def export(model: torch.nn.Module, source: str, out_dir: str) -> list[str]:
    """Merged weights of a native-family model written in `source`'s original format (names, shards, dtype)."""
    family = native_family_for(read_config(source))
    if family is None:
        raise ModelLoadError(f"export: '{source}' is not a {', '.join(NATIVE)} snapshot; only those have an "
                             f"original format to write back (other models: save_pretrained)")
    module = FAMILIES[family]
    if hasattr(module, "to_upstream_state"):  # tensors fused / stacked differently upstream (llada2)
        return export_weights(model, source, out_dir, lambda state: module.to_upstream_state(state, model.config))
    return export_weights(model, source, out_dir, lambda state: renamed_state(state, module.to_upstream))


def load_tokenizer(path: str, trust_remote_code: bool = False):
    """The snapshot's tokenizer without its remote code.

    Dream ships `tokenizer_class: DreamTokenizer` (vocab.json + merges.txt, with an auto_map to
    its own Python file); that is a Qwen2 byte-level BPE, so it loads as transformers'
    Qwen2Tokenizer. A mask token the tokenizer lacks is taken from config.json's mask_token_id."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Tokenizer

    settings_file = os.path.join(path, "tokenizer_config.json")
    settings = {}
    if os.path.isfile(settings_file):
        with open(settings_file) as fh:
            settings = json.load(fh)
    remote_class = settings.get("tokenizer_class") not in (None, "PreTrainedTokenizerFast") and (
        "auto_map" in settings or settings.get("tokenizer_class") == "DreamTokenizer")
    try:
        if remote_class and not trust_remote_code:
            if os.path.isfile(os.path.join(path, "tokenizer.json")):
                tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
            elif os.path.isfile(os.path.join(path, "vocab.json")) and os.path.isfile(os.path.join(path, "merges.txt")):
                tokenizer = Qwen2Tokenizer.from_pretrained(path)
            else:
                raise ModelLoadError(f"{settings_file}: tokenizer_class {settings['tokenizer_class']!r} is remote "
                                     f"code, and '{path}' has neither tokenizer.json nor vocab.json + merges.txt")
        elif settings.get("tokenizer_class") == "PreTrainedTokenizerFast":
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelLoadError):
            raise
        raise ModelLoadError(f"'{path}': cannot load its tokenizer ({exc})") from None
    if tokenizer.mask_token_id is None:
        mask_id = read_config(path).get("mask_token_id") if os.path.isfile(os.path.join(path, "config.json")) else None
        if mask_id is not None:
            tokenizer.mask_token = tokenizer.convert_ids_to_tokens(int(mask_id))
    return tokenizer


__all__ = ["FAMILIES", "ModelLoadError", "detect", "export", "family_of", "load_pretrained", "load_tokenizer",
           "lora_exclude", "native_family_for", "register", "shifts_logits"]
