"""Keys an earlier dlmrl version had and this one moved or retired.

A run directory's own config.yaml (`saved_by_run`) written before is moved to the new place, so its
checkpoints still evaluate; a user's old key is refused in one line that names where it went.
"""

from __future__ import annotations

import dataclasses

from reasoning.schema import ConfigError, shown


def move_retired_keys(tree: dict, saved_by_run: bool) -> None:
    """Every move of this module, applied to the raw YAML tree before it is typed."""
    move_objective_keys(tree, saved_by_run)
    move_model_block_length(tree, saved_by_run)


def move_model_block_length(tree: dict, saved_by_run: bool) -> None:
    """`model.block_length` (until 2026-12-07) was a block-diffusion model's attention block; it is
    `rollout.block_length` now, which names the decoding block of every model."""
    model = tree.get("model")
    if not isinstance(model, dict) or "block_length" not in model:
        return
    value = model.pop("block_length")
    if not saved_by_run:
        raise ConfigError(f"config key 'model.block_length' is retired: a block-diffusion model's attention block "
                          f"is rollout.block_length (null = the model's own); write rollout.block_length: "
                          f"{shown(value, 40)}")
    rollout = tree.setdefault("rollout", {})
    if value is not None and isinstance(rollout, dict) and rollout.get("block_length") is None:
        rollout["block_length"] = value


MOVED_TO_OBJECTIVE = ("clip_eps_low", "clip_eps_high", "kl_coef", "merge_steps", "prompt_mask_prob", "importance_cap")


def move_objective_keys(tree: dict, saved_by_run: bool) -> None:
    """The objective's own settings live in `trainer.objective: {name: ..., key: value}` (2026-12-07).
    A run directory's config.yaml written before is moved there; a user's flat key is refused,
    naming its new place."""
    trainer = tree.get("trainer")
    if not isinstance(trainer, dict):
        return
    for key in [k for k in MOVED_TO_OBJECTIVE if k in trainer]:
        value = trainer.pop(key)
        objective = trainer.get("objective", "trajectory")
        name = objective.get("name", "trajectory") if isinstance(objective, dict) else objective
        if not saved_by_run:
            raise ConfigError(f"config key 'trainer.{key}' moved into the objective's settings: write "
                              f"trainer.objective: {{name: {name}, {key}: {shown(value, 40)}}} (or the override "
                              f"trainer.objective.{key}={shown(value, 40)})")
        if value is not None and key in _settings_fields(name):  # another objective's key was written as null-ish
            trainer["objective"] = {**(objective if isinstance(objective, dict) else {"name": name}), key: value}


def _settings_fields(name: str) -> set[str]:
    from reasoning.objectives import objective_class

    try:
        return {f.name for f in dataclasses.fields(objective_class(name).Settings)}
    except ValueError:
        return set()
