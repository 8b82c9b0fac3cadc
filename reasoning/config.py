"""The run config: one nested dataclass per YAML block (docs/training.md, "Config").

    cfg = load_config("configs/sudoku4_tiny_sft.yaml", ["sft.steps=50"])

Unknown keys, wrong types and missing files raise `ConfigError` naming the key.
The resolved config is written to the run directory by `write_resolved`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Literal

import yaml

from reasoning.modeling import ModelConfig
from reasoning.prefer_config import PreferConfig
from reasoning.retired_keys import move_retired_keys
from reasoning.schema import (ConfigError, apply_override, drop_unknown_keys, from_dict, load_yaml, parse_override,
                              shown, suggest, to_dict)
from reasoning.tasks.base import DataConfig
import rewards
from rewards.registry import RewardsConfig
from rollouts.decoding import DecodingConfig
from reasoning.rollout_config import AsyncConfig, DynamicSamplingConfig, HintsConfig, RolloutConfig  # noqa: F401

DEEPSPEED_PRESETS = ("zero0", "zero2", "zero3")


@dataclass
class SFTConfig:
    """Masked-diffusion supervised fine-tuning (LLaDA objective)."""

    steps: int = 200
    batch_size: int = 128
    micro_batch_size: int | None = None  # None = batch_size (no gradient accumulation)
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    # llada: one t per answer, whole canvas; block_diffusion (sdar, llada2): a t per block, each block
    # predicted from the clean blocks before it (SDAR / BD3-LM)
    objective: Literal["llada", "block_diffusion"] = "llada"
    mask_eps: float = 1e-3  # t ~ U(mask_eps, 1]
    corrupt_prob: float = 0.0  # replace this fraction of visible answer tokens by random ones (for revision)
    deepspeed: str = "zero0"  # a preset in configs/deepspeed/ or a path to a JSON file
    eval_every: int = 50
    checkpoint_every: int = 0  # 0 = only at the end
    log_every: int = 10
    # stop as soon as held-out greedy accuracy on `target_n` problems (checked every `target_every`
    # steps) reaches this: an RL warm start defined by what it can do, not by a step count that
    # means something else on another machine. 0 = off (train all `steps`)
    target_accuracy: float = 0.0
    target_every: int = 10
    target_n: int = 128

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"config key 'sft.lr': expected a finite number > 0, got {self.lr}")
        if not 0 <= self.target_accuracy <= 1:
            raise ConfigError(f"config key 'sft.target_accuracy': expected in [0, 1], got {self.target_accuracy}")
        for key in ("steps", "batch_size", "target_every", "target_n"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'sft.{key}': expected >= 1, got {getattr(self, key)}")


@dataclass
class TrainerConfig:
    """RL trainer settings (`dlmrl train`); see reasoning/rl.py for the algorithm."""

    # a registered objective's name (reasoning/objectives: trajectory, mean_field, ...; a class of your
    # own as module:Class or file.py:Class), or {name: NAME, <fields of its Settings>}: its own
    # settings, typed and checked, the paper's defaults for the rest
    objective: str | dict = "trajectory"
    steps: int = 100
    lr: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: plain SGD (step proportional to the gradient)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    # cosine: decay to 10 % of `lr` at the end of the budget (`steps`, or `max_seconds` of training
    # when that comes first) — late updates, made from few informative groups, move the weights less
    lr_schedule: Literal["constant", "cosine"] = "constant"
    prompts_per_step: int = 16  # P; each gets rollout.group_size samples
    # null = the objective's paper default (its class's `paper_defaults`, reasoning/objectives/)
    inner_steps: int | None = None  # μ: optimizer steps per batch of rollouts (PPO epochs)
    micro_batch_size: int = 32  # samples per forward/backward (bounds memory; gradients accumulate)
    normalize_std: bool | None = None  # divide group-relative advantages by the group's reward std
    std_correction: int | None = None  # that std's ddof: 0 = population (d1, TRL), 1 = sample (JustGRPO)
    leave_one_out: bool | None = None  # baseline = mean of the other G-1 rewards
    deepspeed: str = "zero0"
    grad_clip: float = 1.0
    eval_every: int = 0  # 0 = only at the start and the end
    eval_every_s: float = 0.0  # also evaluate each time this much training time (eval excluded) has passed
    max_seconds: float = 0.0  # stop after this much training time (0 = run all `steps`)
    log_every: int = 1
    checkpoint_every: int = 50
    keep_checkpoints: int = 3  # the newest N complete checkpoints are kept
    save_rollouts_every: int = 0  # write that step's trajectories to rollouts/step_NNNNNN.jsonl (0 = never)
    resume: str = "none"  # none | auto (newest complete checkpoint of this run) | PATH to a checkpoint
    sft_warm_start: bool = False  # first run the `sft` block (into RUN_DIR/sft) and start RL from its checkpoint

    def __post_init__(self) -> None:
        for key in ("steps", "prompts_per_step", "inner_steps", "micro_batch_size", "keep_checkpoints"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"config key 'trainer.{key}': expected >= 1, got {getattr(self, key)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"config key 'trainer.lr': expected a finite number > 0, got {self.lr}")
        for key in ("max_seconds", "eval_every_s"):  # 0 = off
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise ConfigError(f"config key 'trainer.{key}': expected a finite number of seconds >= 0 "
                                  f"(0 = off), got {getattr(self, key)}")
        if self.std_correction not in (None, 0, 1):
            raise ConfigError(f"config key 'trainer.std_correction': expected 0 or 1, got {self.std_correction}")
        if isinstance(self.objective, dict) and not isinstance(self.objective.get("name"), str):
            raise ConfigError(f"config key 'trainer.objective.name': expected the objective's name, got "
                              f"{shown(self.objective.get('name'))} (trainer.objective: {{name: NAME, <its settings>}})")

    @property
    def objective_name(self) -> str:
        return self.objective["name"] if isinstance(self.objective, dict) else self.objective

    @property
    def objective_values(self) -> dict:
        """The objective settings the config gives (without `name`)."""
        return {k: v for k, v in self.objective.items() if k != "name"} if isinstance(self.objective, dict) else {}


@dataclass
class EvalConfig:
    n: int = 256  # held-out problems per eval (capped by the test split)
    batch_size: int = 256
    decoding: dict = field(default_factory=dict)  # overrides of the rollout's decoding settings

    def __post_init__(self) -> None:
        for key in ("n", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'eval.{key}': expected >= 1, got {getattr(self, key)}")


@dataclass
class RayConfig:
    """Rollout workers: Ray actors when enabled, else the same worker code in this process."""

    enabled: bool = False
    address: str = "local"  # local (a fresh local instance) | auto | ray://host:port
    num_workers: int = 2
    threads_per_worker: int = 1  # torch threads per worker; 1 is fastest when workers share cores
    placement: Literal["spread", "pack"] = "spread"  # workers over as many nodes as possible, or few
    connect_timeout_s: float = 30.0  # `address` that answers nothing: a clear error after this long
    gpus_per_worker: float = 0.0  # GPUs each worker asks Ray for (0.5: two share one); 0 = CPU workers

    def __post_init__(self) -> None:
        if self.address not in ("local", "auto") and not self.address.startswith("ray://"):
            raise ConfigError(f"config key 'ray.address': expected local, auto or ray://host:port, got {self.address!r}")
        for key, least in (("num_workers", 1), ("threads_per_worker", 1), ("gpus_per_worker", 0)):
            if getattr(self, key) < least:
                raise ConfigError(f"config key 'ray.{key}': expected >= {least}, got {getattr(self, key)}")


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb: bool = False
    progress: bool = True  # one progress bar per phase in a terminal, plain lines in a log
    verbose: bool = False  # the libraries' own progress bars, INFO logs and deprecation warnings (or --verbose)


@dataclass
class Config:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    threads: int = 1  # torch threads for this process; 1 is fastest under concurrent load
    overwrite: bool = False  # a fresh run into a directory holding an earlier run's checkpoints clears it
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    prefer: PreferConfig = field(default_factory=PreferConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        """Trainer keys left null take the chosen objective's paper defaults."""
        if self.threads < 1:
            raise ConfigError(f"config key 'threads': expected >= 1, got {self.threads}")
        if not 0 <= self.seed < 2 ** 63:
            raise ConfigError(f"config key 'seed': expected an integer in [0, 2**63), got {self.seed}")
        if (not self.name or os.sep in self.name or self.name in (".", "..") or len(self.name) > 200
                or not self.name.isprintable()):
            raise ConfigError(f"config key 'name': expected a plain directory name (one line of printable "
                              f"characters, at most 200), got {shown(self.name)}")
        from reasoning.objectives import Objective, objective_class

        tr = self.trainer
        try:
            objective = objective_class(tr.objective_name)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for key, value in {**Objective.paper_defaults, **objective.paper_defaults}.items():
            if hasattr(tr, key) and getattr(tr, key) is None:
                setattr(tr, key, value)
        settings = self.objective_settings()  # typed and checked now, before anything runs
        if settings.kl_coef > 0 and not objective.has_kl:
            raise ConfigError(f"config key 'trainer.objective.kl_coef': objective '{tr.objective_name}' has no KL "
                              f"term (its paper uses none); set it to 0")
        if settings.kl_coef > 0 and not self.model.lora.enabled:
            raise ConfigError("config key 'trainer.objective.kl_coef' > 0 needs model.lora.enabled: the reference "
                              "policy is the model with its adapter disabled (a full fine-tune keeps no frozen copy)")
        objective.check_decoding(self.rollout_decoding())
        asynchronous = self.rollout.async_
        if asynchronous.enabled and asynchronous.max_staleness > 0 and not objective.trains_stale:
            raise ConfigError(f"config key 'rollout.async.max_staleness': objective '{tr.objective_name}' cannot correct "
                              f"stale rollouts (its surrogate's behaviour log-probs need the old weights; only "
                              f"'trajectory' records them); use objective trajectory or max_staleness 0")

    def objective_settings(self):
        """The chosen objective's Settings: its paper defaults (β only with LoRA, which gives the
        reference), then what `trainer.objective` sets, then the hint settings of `rollout.hints`."""
        from reasoning.objectives import objective_class

        tr = self.trainer
        cls = objective_class(tr.objective_name)
        own = {f.name for f in dataclasses.fields(cls.Settings)}
        values = {k: v for k, v in cls.paper_defaults.items() if k in own}
        if not self.model.lora.enabled:
            values["kl_coef"] = 0.0  # a full fine-tune has no adapter to disable: no reference
        values.update(train_hints=self.rollout.hints.train_hints, hint_entropy_fraction=self.rollout.hints.entropy_fraction)
        values.update(tr.objective_values)
        return from_dict(cls.Settings, values, "trainer.objective")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.output_dir, self.name)

    def rollout_decoding(self, **overrides) -> DecodingConfig:
        """The rollout block's decoding settings (without group_size), optionally overridden."""
        base = {f.name: getattr(self.rollout, f.name) for f in dataclasses.fields(DecodingConfig)}
        return DecodingConfig(**{**base, **overrides})

    def eval_decoding(self) -> DecodingConfig:
        """The rollout's decoding settings with `eval.decoding` overrides applied."""
        base = dataclasses.asdict(self.rollout_decoding(record_predictions=False, decode_past_stop=False))
        for key in self.eval.decoding:
            if key not in base:
                raise ConfigError(f"unknown config key 'eval.decoding.{key}'{suggest(key, base)}")
        return from_dict(DecodingConfig, {**base, **self.eval.decoding}, "eval.decoding")


def load_config(path: str | None, overrides: list[str] = (), saved_by_run: bool = False) -> Config:
    """YAML file (optional) + `key.sub=value` overrides -> validated Config.

    `saved_by_run`: the file is a run's own config.yaml (eval/sample of its checkpoints);
    keys this version does not know are dropped with a note instead of refused."""
    tree: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            what = ("is a directory, not a YAML file" if os.path.isdir(path) else
                    "is not a regular file (a FIFO, a device, or a link to one)" if os.path.exists(path)
                    else "not found")
            raise ConfigError(f"config file '{path}' {what}")
        with open(path) as fh:
            tree = load_yaml(fh.read(), f"config file '{path}'") or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"config file '{path}': expected a mapping of blocks at the top level")
    if isinstance(tree.get("rewards"), list):  # `rewards: [...]` is short for `rewards: {functions: [...]}`
        tree["rewards"] = {"functions": tree["rewards"]}
    move_retired_keys(tree, saved_by_run)
    if saved_by_run:
        for block in (tree.get("rollout"), (tree.get("eval") or {}).get("decoding")):
            if isinstance(block, dict) and block.get("top_k") == 0:
                block["top_k"] = None  # runs before 2026-12 wrote 0 for "all tokens"
        dropped = drop_unknown_keys(Config, tree)
        if dropped:
            print(f"note: {path} was written by another dlmrl version; ignoring its keys "
                  f"{', '.join(dropped)}", file=sys.stderr)
    for text in overrides:
        keys, value = parse_override(text)
        if keys[:2] == ["trainer", "objective"] and len(keys) > 2:  # trainer.objective.kl_coef=...: a mapping
            trainer = tree.setdefault("trainer", {})
            if isinstance(trainer, dict) and not isinstance(trainer.get("objective"), dict):
                trainer["objective"] = {"name": trainer.get("objective", "trajectory")}
        apply_override(tree, keys, value)
        move_retired_keys(tree, False)
        if isinstance(tree.get("rewards"), list):
            tree["rewards"] = {"functions": tree["rewards"]}
    cfg = from_dict(Config, tree)
    check_files(cfg)
    return cfg


def deepspeed_config_path(preset: str, key: str) -> str:
    """A preset name (zero0/zero2/zero3) or a JSON path -> an existing file path."""
    if preset in DEEPSPEED_PRESETS:
        return os.path.join(configs_dir(), "deepspeed", f"{preset}.json")
    if os.path.isfile(preset):
        return preset
    raise ConfigError(f"config key '{key}': '{preset}' is neither a preset{suggest(preset, DEEPSPEED_PRESETS)} nor an existing JSON file")


def configs_dir() -> str:
    """The repository's configs/ folder (next to the packages)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def check_files(cfg: Config) -> None:
    """Files the config points at must exist; say which key names the missing one."""
    if cfg.model.path is not None and not os.path.isdir(cfg.model.path):
        raise ConfigError(f"config key 'model.path': directory '{cfg.model.path}' does not exist")
    for i, spec in enumerate(cfg.rewards.functions):
        try:
            rewards.get(spec.reference, spec.args)
        except KeyError as exc:
            raise ConfigError(f"config key 'rewards.functions[{i}]': {exc.args[0]}") from None
    deepspeed_config_path(cfg.sft.deepspeed, "sft.deepspeed")
    deepspeed_config_path(cfg.trainer.deepspeed, "trainer.deepspeed")
    deepspeed_config_path(cfg.prefer.deepspeed, "prefer.deepspeed")
    if cfg.trainer.resume not in ("none", "auto") and not os.path.isdir(cfg.trainer.resume):
        raise ConfigError(f"config key 'trainer.resume': checkpoint directory '{cfg.trainer.resume}' does not exist "
                          f"(expected none, auto or a checkpoint path)")
    cfg.eval_decoding()


def write_resolved(cfg: Config, run_dir: str) -> str:
    """Write the fully resolved config to run_dir/config.yaml (what actually ran)."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.yaml")
    tree = to_dict(cfg)
    settings = dataclasses.asdict(cfg.objective_settings())  # every setting the objective ran with
    for key in ("train_hints", "hint_entropy_fraction"):  # written under rollout.hints
        settings.pop(key, None)
    tree["trainer"]["objective"] = {"name": cfg.trainer.objective_name, **settings}
    with open(path, "w") as fh:
        yaml.safe_dump(tree, fh, sort_keys=False)
    return path
