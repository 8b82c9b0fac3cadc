"""Model families: each a tiny random model of that architecture, saved to disk and loaded by path,
then sampled, replayed exactly, trained one RL step and evaluated."""

import json
import os
import textwrap

import pytest
import torch

from reasoning.cli import main
from reasoning.config import load_config
from reasoning.modeling import ModelConfig, build_char_tokenizer, load_model
from reasoning.rl import run_rl
from reasoning.schema import ConfigError
from rollouts import DecodingConfig, DiffusionPolicy, TokenIds, replay, sample

REMOTE_CODE = textwrap.dedent('''
    """A checkpoint's own modeling code (like LLaDA's or Dream's), loaded through auto_map."""
    from transformers import LlamaConfig, LlamaForCausalLM


    class TinyDLMConfig(LlamaConfig):
        model_type = "tiny_dlm"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.is_causal = False  # a masked diffusion LM attends both ways


    class TinyDLMForMaskedDiffusion(LlamaForCausalLM):
        config_class = TinyDLMConfig
''')


def save_masked_lm(path, tokenizer):
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    config = ModernBertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=96, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                              cls_token_id=tokenizer.eos_token_id, sep_token_id=tokenizer.eos_token_id,
                              global_attn_every_n_layers=1)
    torch.manual_seed(0)
    ModernBertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def save_remote(path, tokenizer):
    import importlib.util

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "modeling_tiny_dlm.py"), "w") as fh:
        fh.write(REMOTE_CODE)
    spec = importlib.util.spec_from_file_location("modeling_tiny_dlm_fixture", os.path.join(path, "modeling_tiny_dlm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.TinyDLMConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                  max_position_embeddings=96, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
    torch.manual_seed(0)
    module.TinyDLMForMaskedDiffusion(config).save_pretrained(path)
    with open(os.path.join(path, "config.json")) as fh:
        saved = json.load(fh)
    saved["auto_map"] = {"AutoConfig": "modeling_tiny_dlm.TinyDLMConfig",
                         "AutoModelForCausalLM": "modeling_tiny_dlm.TinyDLMForMaskedDiffusion"}
    saved["mask_token_id"] = tokenizer.mask_token_id  # read from the config, like LLaDA's
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(saved, fh)
    tokenizer.save_pretrained(path)


FAMILIES = {
    "masked_lm": (save_masked_lm, ["model.family=masked_lm", "model.lora.target_modules=[Wqkv,Wo]"]),
    "remote": (save_remote, ["model.family=remote", "model.trust_remote_code=true"]),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    FAMILIES[request.param][0](path, build_char_tokenizer())
    return request.param, path


def test_family_samples_and_replays_exactly(family):
    name, path = family
    overrides = dict(kv.split("=", 1) for kv in FAMILIES[name][1] if "target_modules" not in kv)
    cfg = ModelConfig(family=overrides["model.family"], path=path,
                      trust_remote_code=overrides.get("model.trust_remote_code") == "true")
    model, tokenizer = load_model(cfg)
    if name == "remote":
        assert type(model).__name__ == "TinyDLMForMaskedDiffusion"
    policy = DiffusionPolicy(model.eval(), TokenIds.from_tokenizer(tokenizer, model.config))
    decoding = DecodingConfig(gen_length=8, block_length=4, steps=4, temperature=1.0, selection_temperature=0.5,
                              latent_steps=1)
    prompts = [tokenizer(text)["input_ids"] for text in ("sudoku 12..", "abc")]
    trajectories = sample(policy, prompts, decoding, seeds=[1, 2])
    replayed = replay(policy, trajectories, decoding)
    for traj, tokens, selection in zip(trajectories, replayed.token_logp, replayed.selection_logp):
        assert (tokens.detach() - torch.as_tensor(traj.event_logp[traj.commits])).abs().max() < 1e-4
        assert (selection.detach() - torch.as_tensor(traj.selection_logp)).abs().max() < 1e-4


def test_family_trains_one_rl_step_and_evaluates(family, tmp_path, capsys):
    name, path = family
    cfg = load_config(None, [
        f"output_dir={tmp_path}", "name=rl", f"model.path={path}", *FAMILIES[name][1], "model.lora.enabled=true",
        "model.lora.r=4", "data.task=sudoku4", "data.train_size=32", "data.test_size=8", "eval.n=8",
        "rollout.gen_length=20", "rollout.steps=10", "rollout.temperature=1.0", "rollout.group_size=4",
        "rewards=[{fn: 'reward_fns:digit_fraction'}]", "trainer.steps=1", "trainer.prompts_per_step=2",
        "trainer.lr=0.01", "trainer.checkpoint_every=0", "logging.progress=false", "logging.tensorboard=false"])
    result = run_rl(cfg)
    assert result["policy_version"] == 1
    with open(os.path.join(cfg.run_dir, "metrics.jsonl")) as fh:
        step = [json.loads(line) for line in fh if '"reward"' in line][0]
    assert step["ratio/first_inner_max_dev"] < 1e-4
    assert main(["eval", os.path.join(cfg.run_dir, "checkpoints", "step_000001")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["accuracy"] == result["eval/sudoku4/acc"]


def test_remote_code_needs_explicit_trust(tmp_path):
    path = str(tmp_path / "remote")
    save_remote(path, build_char_tokenizer())
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_model(ModelConfig(family="remote", path=path))
    with pytest.raises(ConfigError, match="family 'remote'"):
        load_model(ModelConfig(family="bidirectional", path=path))
