"""Config system: YAML + overrides into dataclasses; every error names the culprit."""

import os

import pytest
import torch
import yaml

from reasoning.config import Config, load_config, write_resolved
from reasoning.schema import ConfigError


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "name: x\nsft: {steps: 5, lr: 0.01}\nrollout: {gen_length: 24}\n")
    cfg = load_config(path, ["sft.lr=1e-4", "rollout.steps=12", "model.lora.enabled=true",
                             "eval.decoding.temperature=0.5"])
    assert isinstance(cfg, Config)
    assert cfg.name == "x" and cfg.sft.steps == 5
    assert cfg.sft.lr == pytest.approx(1e-4)
    assert cfg.rollout.gen_length == 24 and cfg.rollout.steps == 12
    assert cfg.model.lora.enabled is True
    assert cfg.eval_decoding().temperature == 0.5 and cfg.eval_decoding().gen_length == 24
    assert cfg.trainer.objective == "trajectory"  # defaults fill the rest


def test_shipped_configs_load():
    configs = os.path.join(os.path.dirname(__file__), "..", "configs")
    names = [n for n in os.listdir(configs) if n.endswith(".yaml")]
    assert names
    for name in names:
        load_config(os.path.join(configs, name))


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'sft.learning_rat'.*") as err:
        load_config(write(tmp_path, "sft: {learning_rat: 0.1}\n"))
    assert "valid keys" in str(err.value) or "did you mean" in str(err.value)
    with pytest.raises(ConfigError, match=r"'trainer.objectiv'.*did you mean 'objective'"):
        load_config(None, ["trainer.objectiv=trajectory"])
    with pytest.raises(ConfigError, match=r"'rollut'.*did you mean 'rollout'"):
        load_config(write(tmp_path, "rollut: {steps: 3}\n"))


def test_wrong_type_names_key_and_expectation(tmp_path):
    with pytest.raises(ConfigError, match=r"'sft.steps': expected int, got 'many'"):
        load_config(write(tmp_path, "sft: {steps: many}\n"))
    with pytest.raises(ConfigError, match=r"'model.lora.enabled': expected bool"):
        load_config(None, ["model.lora.enabled=3"])
    with pytest.raises(ConfigError, match=r"'trainer.objective': expected one of .*did you mean 'mean_field'"):
        load_config(None, ["trainer.objective=meanfield"])
    with pytest.raises(ConfigError, match=r"'sft': expected a mapping"):
        load_config(write(tmp_path, "sft: 3\n"))
    with pytest.raises(ConfigError, match=r"eval.decoding.stepz.*did you mean 'steps'"):
        load_config(None, ["eval.decoding.stepz=3"])
    with pytest.raises(ConfigError, match=r"rollout.*block_length"):
        load_config(None, ["rollout.gen_length=20", "rollout.block_length=7"])


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope.yaml' not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"'model.path': directory '.*missing_model' does not exist"):
        load_config(None, [f"model.path={tmp_path / 'missing_model'}"])
    with pytest.raises(ConfigError, match=r"'sft.deepspeed': 'zero5'.*did you mean 'zero0'|'sft.deepspeed': 'zero5'"):
        load_config(None, ["sft.deepspeed=zero5"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["sft.steps"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["name=r", "sft.steps=7", f"output_dir={tmp_path}"])
    path = write_resolved(cfg, cfg.run_dir)
    assert path == os.path.join(tmp_path, "r", "config.yaml")
    again = load_config(path)
    # the objective is written with every setting it ran with (its paper defaults resolved)
    assert yaml.safe_load(open(path))["trainer"]["objective"] == {"name": "trajectory", "clip_eps_low": 0.2,
        "clip_eps_high": 0.2, "kl_coef": 0.0, "importance_cap": 5.0, "merge_steps": 1, "replay_batch": 256}
    assert again.objective_settings() == cfg.objective_settings()
    again.trainer.objective = cfg.trainer.objective
    assert again == cfg
    assert yaml.safe_load(open(path))["sft"]["steps"] == 7


@pytest.mark.parametrize("overrides,message", [
    (["rollout.gen_length=16", "rollout.block_length=4", "rollout.steps=2"], "'rollout.steps' \\(2\\) must be at least"),
    (["rollout.gen_length=10", "rollout.block_length=4"], "'rollout.block_length' \\(4\\) must divide 'gen_length'"),
    (["rollout.commit=topk"], "rollout.commit"),
    (["ray.address=localhost"], "ray.address"),
    (["ray.num_workers=0"], "ray.num_workers"),
    (["ray.gpus_per_worker=-1"], "ray.gpus_per_worker"),
])
def test_bad_rollout_and_ray_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_gpu_configs_use_native_families_whose_lora_targets_exist_at_full_size(tmp_path):
    """Each GPU config loads its snapshot natively (family auto, no remote code), and its LoRA
    targets wrap modules of the full-size native model (built on the meta device from the manifest)."""
    import json

    from reasoning.modeling import apply_lora
    from rollouts.families import FAMILIES

    here = os.path.dirname(__file__)
    gpu = os.path.join(here, "..", "configs", "gpu")
    manifests = {"llada8b": ("llada", "realarch/llada-8b-instruct"), "dream7b": ("dream", "realarch/dream-v0-instruct-7b"),
                 "sdar8b": ("sdar", "blockarch/sdar-8b-chat"), "llada2mini": ("llada2", "blockarch/llada2.0-mini")}
    for name in sorted(os.listdir(gpu)):
        cfg = load_config(os.path.join(gpu, name), [f"model.path={tmp_path}"])
        assert cfg.model.family == "auto" and not cfg.model.trust_remote_code and cfg.model.dtype == "bfloat16"
        assert cfg.model.lora.enabled and cfg.trainer.deepspeed == "zero2" and cfg.model.gradient_checkpointing
        kind, manifest_file = manifests[name.split("_")[0]]
        manifest = json.load(open(os.path.join(here, "fixtures", f"{manifest_file}.manifest.json")))
        family = FAMILIES[kind]
        with torch.device("meta"):
            model = apply_lora(family.MODEL_CLASS(family.native_config(manifest["config"])), cfg.model.lora, kind)
        wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
        assert wrapped == set(cfg.model.lora.target_modules)



def test_objective_settings_moved_into_trainer_objective(tmp_path):
    """A user's flat key is refused, naming its new place; a run directory's config.yaml written
    before the move keeps its settings (moved, for the objective that declares them)."""
    old = tmp_path / "config.yaml"
    old.write_text("trainer:\n  objective: mean_field\n  kl_coef: 0.02\n  merge_steps: 3\n  prompt_mask_prob: 0.3\n"
                   "model:\n  lora: {enabled: true}\n")
    with pytest.raises(ConfigError, match=r"'trainer.kl_coef' moved.*trainer.objective: \{name: mean_field, kl_coef: 0.02\}"):
        load_config(str(old))
    cfg = load_config(str(old), saved_by_run=True)
    settings = cfg.objective_settings()
    assert (settings.kl_coef, settings.prompt_mask_prob) == (0.02, 0.3)  # merge_steps is trajectory's: dropped
    spg = load_config(None, ["trainer.objective=spg", "trainer.objective.spg_beta=1.0"]).objective_settings()
    assert (spg.spg_beta, spg.spg_omega) == (1.0, 0.5)  # the one set, and the paper's for the rest
