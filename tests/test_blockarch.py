"""Block-diffusion snapshots (tests/fixtures/blockarch, written by the upstream code): loaded natively
with the family's block-causal attention, they reproduce the upstream forward (ref.pt)."""

import json
import os

import numpy as np
import pytest
import torch

from rollouts import load_pretrained, load_tokenizer
from rollouts.families import detect, read_config

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "blockarch")


def fixture(kind):
    return os.path.join(HERE, kind, "ckpt"), torch.load(os.path.join(HERE, kind, "ref.pt"), weights_only=False)


def test_sdar_reproduces_the_upstream_logits_with_its_mask_and_with_none():
    path, ref = fixture("sdar")
    assert detect(read_config(path)) == "sdar"
    model = load_pretrained(path).eval()  # family auto
    assert model.config.dlm_family == "sdar" and model.config.block_length == ref["block_length"] == 4
    with torch.no_grad():
        given = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
        built = model(input_ids=ref["input_ids"]).logits  # the family's block-causal mask, block length 4
        padded = model(input_ids=ref["input_ids"], attention_mask=torch.ones_like(ref["input_ids"])).logits
    for logits in (given, built, padded):
        assert (logits - ref["logits"]).abs().max() < 1e-4


def test_sdar_left_padding_changes_nothing_for_the_real_tokens():
    """Blocks count from each row's first real token, so a left-padded row keeps its logits."""
    path, ref = fixture("sdar")
    model = load_pretrained(path).eval()
    ids = ref["input_ids"][:1]
    padded = torch.cat([torch.full((1, 3), 96), ids], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        shifted = model(input_ids=padded, attention_mask=mask,
                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, 3:]
    assert (plain - shifted).abs().max() < 1e-4


def test_sdar_tokenizer_and_manifest_names():
    path, _ = fixture("sdar")
    tokenizer = load_tokenizer(path)
    assert tokenizer.mask_token == "<|MASK|>" and tokenizer.mask_token_id == 101
    from rollouts.families import sdar
    from rollouts.families.native import expected_shapes

    manifest = json.load(open(os.path.join(HERE, "sdar-8b-chat.manifest.json")))
    shapes = expected_shapes(sdar.MODEL_CLASS, sdar.native_config(manifest["config"]))
    assert shapes == {name: tuple(shape) for name, shape in manifest["state_dict"].items()}
    assert len(shapes) == manifest["tensors"] == 399
    assert sum(torch.Size(shape).numel() for shape in shapes.values()) == manifest["parameters"] == 8_190_735_360


def test_sdar_bad_mask_shape_names_the_family():
    from rollouts.families import ModelLoadError

    path, ref = fixture("sdar")
    model = load_pretrained(path).eval()
    with pytest.raises(ModelLoadError, match="sdar: attention_mask of shape"):
        model(input_ids=ref["input_ids"], attention_mask=torch.ones(2, 1, 5, 5))


def test_llada2_moe_reproduces_the_upstream_logits_with_its_mask_and_with_none():
    path, ref = fixture("llada2")
    assert detect(read_config(path)) == "llada2"
    model = load_pretrained(path).eval()
    model.config.block_length = ref["block_length"]  # 8 in the fixture (generate()'s default is 32)
    with torch.no_grad():
        given = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
        built = model(input_ids=ref["input_ids"]).logits
    for logits in (given, built):
        assert (logits - ref["logits"]).abs().max() < 1e-4
    router = model.model.layers[1].mlp.gate
    assert not router.e_score_correction_bias.requires_grad and "e_score_correction_bias" in dict(router.named_buffers())
    assert router.e_score_correction_bias.abs().sum() > 0  # the snapshot's expert_bias, loaded


def test_llada2_tokenizer_and_manifest_names():
    path, _ = fixture("llada2")
    tokenizer = load_tokenizer(path)
    assert tokenizer.mask_token == "<|mask|>" and tokenizer.eos_token == "<|endoftext|>"
    from rollouts.families import llada2

    manifest = json.load(open(os.path.join(HERE, "llada2.0-mini.manifest.json")))
    native = llada2.native_config(manifest["config"])
    with torch.device("meta"):
        state = llada2.MODEL_CLASS(native).state_dict()
    experts = sum(1 for n in manifest["state_dict"] if ".mlp.experts." in n)
    assert experts == 19 * 256 * 3  # 19 MoE layers of 256 experts, 3 projections each
    total = sum(t.numel() for n, t in state.items() if not n.endswith("e_score_correction_bias"))
    assert total == manifest["parameters"] == 16_255_638_528


def test_llada2_missing_expert_tensor_is_named(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from rollouts.families import ModelLoadError

    path, _ = fixture("llada2")
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    weights = load_file(str(copy / "model.safetensors"))
    del weights["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(weights, str(copy / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="model.layers.1.mlp.experts.3.up_proj.weight"):
        load_pretrained(str(copy))


# --- the user path by path: sample, eval, RL with every objective (LoRA), export ------------------------

RL = """
name: {name}
output_dir: {out}
data: {{task: addition, train_size: 8, test_size: 2}}
model: {{path: {model}, lora: {{enabled: true, r: 4}}}}
rollout: {{block_length: {block}, gen_length: 8, temperature: 1.0, group_size: 2, cache: block}}
rewards: [{{fn: '{reward}'}}]
trainer: {{steps: 2, prompts_per_step: 2, lr: 0.05, micro_batch_size: 4, checkpoint_every: 0,
          objective: {{name: {objective}, kl_coef: 0.0}}, inner_steps: 1}}
eval: {{n: 2}}
logging: {{tensorboard: false, progress: false}}
"""
OBJECTIVES = ["trajectory", "mean_field", "coupled", "spg", "wd1"]


@pytest.mark.parametrize("kind", ["sdar", "llada2"])
def test_sample_eval_and_rl_with_every_objective_by_path(kind, tmp_path, capsys):
    from reasoning.cli import main

    path, _ = fixture(kind)
    block = {"sdar": 4, "llada2": 8}[kind]  # LLaDA2's own is 32: rollout.block_length sets the attention block
    assert main(["sample", path, "--prompt", "1 + 2 =", f"rollout.block_length={block}", "rollout.gen_length=8",
                 "rollout.cache=block", "--output", str(tmp_path / "sample")]) == 0
    sampled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sampled["steps"] >= 1
    assert main(["eval", path, "--task", "addition", "--n", "2", "rollout.gen_length=8", f"rollout.block_length={block}",
                 "--output", str(tmp_path / "eval")]) == 0
    reward = os.path.join(os.path.dirname(os.path.dirname(HERE)), "reward_fns.py") + ":digit_fraction"
    for objective in OBJECTIVES:
        config = tmp_path / f"{objective}.yaml"
        config.write_text(RL.format(name=objective, out=tmp_path / "runs", model=path, block=block, reward=reward,
                                    objective=objective))
        assert main(["train", str(config)]) == 0, objective
        steps = [json.loads(line) for line in open(tmp_path / "runs" / objective / "metrics.jsonl") if '"reward"' in line]
        assert [m["step"] for m in steps] == [1, 2] and steps[-1]["policy_version"] >= 1, objective
    # export: the original names (LLaDA2: q/k/v fused, one tensor per expert again), files and config;
    # the merged weights reload to the adapted model's logits
    from peft import PeftModel
    from safetensors import safe_open

    out = tmp_path / "exported"
    run = tmp_path / "runs" / "trajectory"
    assert main(["export", str(run), str(out)]) == 0
    assert json.load(open(out / "config.json")) == json.load(open(os.path.join(path, "config.json")))
    names = [set(safe_open(os.path.join(d, "model.safetensors"), "pt").keys()) for d in (str(out), path)]
    assert names[0] == names[1]
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        exported = load_pretrained(str(out), attention_block=block).eval()(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(load_pretrained(path, attention_block=block), str(checkpoint / "adapter")).eval()
        base = load_pretrained(path, attention_block=block).eval()(input_ids=ids).logits
        # merged W + BA against W x + B(A x): float32 rounding only (logits of magnitude ~6)
        assert (exported - adapted(input_ids=ids).logits).abs().max() < 1e-4
    assert (exported - base).abs().max() > 1e-4  # RL changed the model


def test_the_retired_model_block_length_names_its_new_key(tmp_path, capsys):
    from reasoning.cli import main

    llada2, _ = fixture("llada2")
    assert main(["sample", llada2, "--prompt", "x", "model.block_length=8", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config key 'model.block_length' is retired" in err[0]
    assert "rollout.block_length: 8" in err[0] and not os.listdir(tmp_path)


def test_lora_on_the_moe_experts_trains_syncs_and_exports(tmp_path):
    """`model.lora.target_parameters` puts LoRA on LLaDA2's stacked experts (peft's parameter
    targeting): RL updates them, and the export writes the merged experts back one tensor each."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from reasoning.cli import main

    path, _ = fixture("llada2")
    reward = os.path.join(os.path.dirname(os.path.dirname(HERE)), "reward_fns.py") + ":digit_fraction"
    config = tmp_path / "moe.yaml"
    config.write_text(RL.format(name="moe", out=tmp_path / "runs", model=path, block=4, reward=reward,
                                objective="trajectory").replace(
        "lora: {enabled: true, r: 4}",
        "lora: {enabled: true, r: 4, target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]}"))
    assert main(["train", str(config)]) == 0
    run = tmp_path / "runs" / "moe"
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    adapter = load_file(str(checkpoint / "adapter" / "adapter_model.safetensors"))
    assert any("experts" in name for name in adapter)
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    exported, base = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(os.path.join(path, "model.safetensors"))
    name = "model.layers.1.mlp.experts.3.up_proj.weight"
    assert exported[name].shape == base[name].shape and (exported[name] - base[name]).abs().max() > 0
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(load_pretrained(path, attention_block=4), str(checkpoint / "adapter")).eval()
        merged = load_pretrained(str(tmp_path / "out"), attention_block=4).eval()
        assert (merged(input_ids=ids).logits - adapted(input_ids=ids).logits).abs().max() < 1e-4
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("mlp.experts.down_proj", "mlp.experts.nothing").replace("name: moe",
                                                                                                   "name: bad"))
    assert main(["train", str(bad)]) == 2
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.parametrize("kind", ["sdar", "llada2"])
def test_bf16_sharded_copy_loads(kind, tmp_path):
    """As real snapshots ship: bf16, several shards and an index. The same logits as the single fp32
    file loaded in bf16, and within a few % of the upstream fp32 logits (LLaDA2's router stays fp32)."""
    from test_realarch import write_bf16_sharded

    path, ref = fixture(kind)
    write_bf16_sharded(path, tmp_path / "snap")
    block = ref["block_length"]
    model = load_pretrained(str(tmp_path / "snap"), dtype=torch.bfloat16, attention_block=block).eval()
    kinds = {p.dtype for n, p in model.named_parameters() if ".mlp.gate." not in n}
    assert kinds == {torch.bfloat16}
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"]).logits.float()
        single = load_pretrained(path, dtype=torch.bfloat16, attention_block=block).eval()(input_ids=ref["input_ids"])
    assert torch.equal(logits, single.logits.float())
    diff, scale = (logits - ref["logits"]).abs().max(), ref["logits"].abs().max()
    assert diff <= 0.05 * scale, (float(diff), float(scale))


def test_rollout_block_length_sets_the_attention_block_and_replay_is_exact():
    """`rollout.block_length: 8` on LLaDA2 (its own block is 32): the model loads with that attention
    block, decodes block by block, and replay reproduces every recorded log-prob."""
    from reasoning.modeling import ModelConfig, load_model
    from rollouts import DecodingConfig, make_policy, replay, sample

    path, _ = fixture("llada2")
    assert load_model(ModelConfig(path=path))[0].attention_block_length() == 32
    model, tokenizer = load_model(ModelConfig(path=path), attention_block=8)
    policy = make_policy(model.eval(), tokenizer)
    assert policy.attention_block == 8
    cfg = DecodingConfig(gen_length=16, block_length=8, temperature=1.0, cache="block")
    trajectories = sample(policy, [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18]], cfg, seeds=[1, 2])
    assert {t.block_length for t in trajectories} == {8} and [t.block_offset for t in trajectories] == [3, 2]
    with torch.no_grad():
        replayed = replay(policy, trajectories, cfg)
    for trajectory, tokens in zip(trajectories, replayed.token_logp):
        assert np.abs(tokens.numpy() - trajectory.event_logp[trajectory.commits]).max() < 1e-4
