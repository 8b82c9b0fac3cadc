"""What a command was pointed at -> (config, model, tokenizer, output base): a dlmrl checkpoint
(its run's config and LoRA adapter), a model directory (a LLaDA / Dream / ... snapshot, or a
`dlmrl export`), or a YAML config. Shared by `dlmrl eval / sample / export` and the lm-eval model."""

from __future__ import annotations

import dataclasses
import os

from reasoning.schema import ConfigError, setting_error


def load_run_checkpoint(path: str, overrides: list[str]):
    """(config, model, tokenizer, run_dir) for a checkpoint: the config is its run's config.yaml
    (runs/NAME/checkpoints/step_N -> runs/NAME/config.yaml) with the command-line overrides."""
    import torch

    from reasoning.checkpoint import is_checkpoint, load_checkpoint
    from reasoning.config import load_config
    from rollouts.families import ModelLoadError

    if not (os.path.isdir(path) and is_checkpoint(path)):
        raise ConfigError(f"'{path}' is not a dlmrl checkpoint directory (no trainer_state.json)")
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    run_config = os.path.join(run_dir, "config.yaml")
    cfg = load_config(run_config if os.path.isfile(run_config) else None, overrides, saved_by_run=True)
    try:
        model, tokenizer, _ = load_checkpoint(path, getattr(torch, cfg.model.dtype), cfg.model.family,
                                              cfg.model.trust_remote_code, cfg.rollout.block_length)
    except ModelLoadError as exc:
        raise (setting_error(exc, "model") or ConfigError(str(exc))) from None
    return cfg, model, tokenizer, run_dir


def load_target(target: str, overrides: list[str]):
    """(config, model, tokenizer, output base dir) for what `eval`/`sample` was pointed at: a dlmrl
    checkpoint (its run's config), a plain model directory (e.g. a LLaDA or Dream snapshot: the
    default config with model.path set to it), or — for eval — a YAML config."""
    from reasoning.checkpoint import is_checkpoint
    from reasoning.config import load_config
    from reasoning.modeling import load_model

    if os.path.isdir(target) and is_checkpoint(target):
        cfg, model, tokenizer, run_dir = load_run_checkpoint(target, overrides)
        return cfg, model, tokenizer, run_dir
    if os.path.isdir(target):
        if not os.path.isfile(os.path.join(target, "config.json")):
            raise ConfigError(f"'{target}' is neither a dlmrl checkpoint (trainer_state.json) nor a model directory "
                              f"(config.json)")
        cfg = load_config(None, overrides)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=target))
        model, tokenizer = load_model(cfg.model, cfg.rollout.block_length)
        return cfg, model, tokenizer, os.path.join(cfg.output_dir, os.path.basename(os.path.normpath(target)))
    if os.path.isfile(target):
        cfg = load_config(target, overrides)
        model, tokenizer = load_model(cfg.model, cfg.rollout.block_length)
        return cfg, model, tokenizer, cfg.run_dir
    raise ConfigError(f"'{target}' does not exist (expected a checkpoint, a model directory or a config file)")


def to_accelerator(model):
    """The decoding verbs (eval, sample, the lm-eval model) run on the GPU when there is one;
    models load on the CPU."""
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model
