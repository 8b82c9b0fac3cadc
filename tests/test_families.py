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
from rollouts import DecodingConfig, make_policy, replay, sample

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


def save_diffusion_gemma(path, tokenizer):
    """transformers' native DiffusionGemmaForBlockDiffusion, shrunk: 2 layers (one sliding-window, one full),
    2 experts, and a one-layer vision tower (text RL never uses it, but the class always builds one)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, global_head_dim=16,
                max_position_embeddings=96, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                num_experts=2, top_k_experts=1, moe_intermediate_size=32, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=1, num_key_value_heads=1, head_dim=16, position_embedding_size=64)
    torch.manual_seed(0)
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=20)
    DiffusionGemmaForBlockDiffusion(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


FAMILIES = {
    "masked_lm": (save_masked_lm, ["model.family=masked_lm", "model.lora.target_modules=[Wqkv,Wo]"]),
    "remote": (save_remote, ["model.family=remote", "model.trust_remote_code=true"]),
    "diffusion_gemma": (save_diffusion_gemma, ["model.family=diffusion_gemma"]),
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
    if name == "diffusion_gemma":
        assert type(model).__name__ == "DiffusionGemmaForBlockDiffusion"
    policy = make_policy(model.eval(), tokenizer)
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
    with pytest.raises(ConfigError, match="use family remote"):
        load_model(ModelConfig(family="bidirectional", path=path))


def test_diffusion_gemma_adapter_pads_and_self_conditions(tmp_path):
    """Prompt -> encoder, canvas -> decoder: left padding changes nothing, latent thinking is the model's
    self-conditioning, and LoRA wraps the text layers only (the vision tower has q_proj too)."""
    from reasoning.modeling import LoraConfig, apply_lora
    from rollouts import DiffusionGemmaPolicy

    path = str(tmp_path / "dg")
    save_diffusion_gemma(path, build_char_tokenizer())
    model, tokenizer = load_model(ModelConfig(family="diffusion_gemma", path=path))
    policy = make_policy(model.eval(), tokenizer)
    assert isinstance(policy, DiffusionGemmaPolicy) and policy.context_length == 96
    prompt = torch.tensor([tokenizer("sudoku 1234")["input_ids"]])
    answer = torch.full((1, 6), policy.ids.mask)
    answer[0, 2] = tokenizer.convert_tokens_to_ids("3")
    pad = torch.full((1, 3), policy.ids.pad)
    with torch.no_grad():
        plain = policy.step_log_probs(prompt, torch.ones_like(prompt), answer, 1.0)
        padded = policy.step_log_probs(torch.cat([pad, prompt], 1),
                                       torch.cat([torch.zeros_like(pad), torch.ones_like(prompt)], 1), answer, 1.0)
        thought = policy.step_log_probs(prompt, torch.ones_like(prompt), answer, 1.0, latent_steps=1)
        first, _ = policy._decode(prompt, torch.ones_like(prompt), answer)
        reencoded, _ = policy._decode(prompt, torch.ones_like(prompt), answer, self_conditioning=first)
    assert (plain - padded).abs().max() < 1e-5
    assert (plain - thought).abs().max() > 1e-4
    # the latent pass reuses the prompt's KV cache: same as encoding the prompt again
    assert (policy.answer_log_probs(reencoded, 1.0) - thought).abs().max() < 1e-5
    wrapped = apply_lora(model, LoraConfig(enabled=True, r=2), "diffusion_gemma")
    names = [n for n, _ in wrapped.named_parameters() if "lora_A" in n]
    assert names and not any("vision" in n for n in names)
    assert any(".decoder." in n for n in names) and any(".language_model." in n for n in names)
    save_masked_lm(str(tmp_path / "bert"), build_char_tokenizer())
    with pytest.raises(ConfigError, match="'modernbert' model, not diffusion_gemma"):
        load_model(ModelConfig(family="diffusion_gemma", path=str(tmp_path / "bert")))
