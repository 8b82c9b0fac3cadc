"""Real DLM checkpoint formats: LLaDA and Dream snapshots written by their own (transformers 4)
code, loaded natively by path with no remote code. The expected values come from outside dlmrl:
`ref.pt` holds the upstream forward's logits, the manifests the full-size upstream state dicts."""

import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reasoning.cli import main
from reasoning.modeling import ModelConfig, load_model
from reasoning.schema import ConfigError
from rollouts import DecodingConfig, load_pretrained, load_tokenizer, make_policy, sample
from rollouts.families import FAMILIES, detect
from rollouts.families.native import ModelLoadError

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "realarch")
KINDS = ["llada", "dream"]
MANIFESTS = {"llada": "llada-8b-instruct.manifest.json", "dream": "dream-v0-instruct-7b.manifest.json"}


def ckpt(kind):
    return os.path.join(FIXTURES, kind, "ckpt")


def reference(kind):
    return torch.load(os.path.join(FIXTURES, kind, "ref.pt"))


def tensor_names(path):
    names = {}
    for file in sorted(os.listdir(path)):
        if file.endswith(".safetensors"):
            with safe_open(os.path.join(path, file), "pt") as fh:
                names.update({n: (file, fh.get_slice(n).get_dtype()) for n in fh.keys()})
    return names


def logits_of(model, input_ids):
    with torch.no_grad():
        return model(input_ids=input_ids).logits.float()


@pytest.mark.parametrize("kind", KINDS)
def test_loads_by_path_and_reproduces_upstream_logits(kind):
    model = load_pretrained(ckpt(kind))  # no family: detected from config.json
    ref = reference(kind)
    assert model.config.dlm_family == kind
    assert (logits_of(model, ref["input_ids"]) - ref["logits"]).abs().max() <= 1e-4
    assert not any(f.endswith(".py") for f in os.listdir(ckpt(kind)))  # nothing to import: no remote code


def write_bf16_sharded(src, dst, shards=3):
    """The snapshot as real ones ship: bf16, split over several files with model.safetensors.index.json."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    tensors = load_file(os.path.join(src, "model.safetensors"))
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n].to(torch.bfloat16).contiguous() for n in names[k::shards]}
        save_file(part, os.path.join(dst, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, fh)
    config = json.load(open(os.path.join(dst, "config.json")))
    config["dtype"] = "bfloat16"
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_sharded_copy_loads(kind, tmp_path):
    write_bf16_sharded(ckpt(kind), tmp_path / "snap")
    model = load_pretrained(str(tmp_path / "snap"), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ref = reference(kind)
    logits = logits_of(model, ref["input_ids"])
    # sharding changes nothing: bit-equal to the single-file fp32 snapshot loaded as bf16
    assert torch.equal(logits, logits_of(load_pretrained(ckpt(kind), dtype=torch.bfloat16), ref["input_ids"]))
    # and bf16 (8 bits of mantissa, weights and activations) stays within a few % of the fp32 upstream logits
    diff, scale = (logits - ref["logits"]).abs().max(), ref["logits"].abs().max()
    assert diff <= 0.05 * scale, (float(diff), float(scale))


@pytest.mark.parametrize("kind", KINDS)
def test_native_model_maps_onto_the_full_size_manifest(kind):
    """Built on the meta device from the published config values, the native module's tensors map
    onto exactly the upstream state dict: names, shapes, parameter count."""
    manifest = json.load(open(os.path.join(FIXTURES, MANIFESTS[kind])))
    family = FAMILIES[kind]
    config = family.native_config(manifest["config"])
    with torch.device("meta"):
        model = family.MODEL_CLASS(config)
    mapped = {family.to_upstream(name): list(t.shape) for name, t in model.state_dict().items()}
    assert mapped == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"]


def test_auto_detection_and_unknown_architectures(tmp_path):
    assert detect(json.load(open(os.path.join(ckpt("llada"), "config.json")))) == "llada"
    assert detect(json.load(open(os.path.join(ckpt("dream"), "config.json")))) == "dream"
    assert detect({"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"]}) == "masked_lm"
    assert detect({"model_type": "llama", "is_causal": False}) == "bidirectional"
    with pytest.raises(ModelLoadError, match="known: llada, dream"):
        detect({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


def test_pad_equals_eos_model_emits_eos_and_stops():
    """LLaDA's pad id is its EOS id. Bias the model towards EOS: it must be able to write it, and
    an answer whose first block holds EOS stops there (later blocks are never decoded)."""
    model = load_pretrained(ckpt("llada")).eval()
    tokenizer = load_tokenizer(ckpt("llada"))
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos == 97
    model.lm_head.register_forward_hook(lambda module, args, out: out.index_add(
        -1, torch.tensor([eos]), torch.full(out.shape[:-1] + (1,), 50.0)))
    policy = make_policy(model, tokenizer)
    cfg = DecodingConfig(gen_length=8, block_length=4, steps=4)
    trajectory = sample(policy, [[80, 11, 42]], cfg, seeds=[0])[0]
    assert trajectory.final_tokens.tolist() == [eos] * 8
    assert trajectory.forward_passes == 2  # block 1 only (2 steps); block 2 never ran
    # the end-of-turn token stops an answer too (it is in the stop set), [MASK] never does
    assert set(policy.ids.stop) == {97, 98} and policy.ids.mask == 101


def test_mask_from_config_and_stop_ids_from_generation_config(tmp_path):
    snapshot = tmp_path / "llada"
    shutil.copytree(ckpt("llada"), snapshot)
    settings = json.load(open(snapshot / "tokenizer_config.json"))
    settings.pop("mask_token")
    json.dump(settings, open(snapshot / "tokenizer_config.json", "w"))
    generation = json.load(open(snapshot / "generation_config.json"))
    json.dump({**generation, "eos_token_id": [97, 100]}, open(snapshot / "generation_config.json", "w"))
    model, tokenizer = load_model(ModelConfig(path=str(snapshot)))
    assert tokenizer.mask_token_id == 101  # config.json's mask_token_id
    policy = make_policy(model, tokenizer)
    assert policy.ids.mask == 101 and set(policy.ids.stop) == {97, 98, 100}  # eos list + <|eot_id|>


def test_llada_chat_template_renders_prompts():
    from reasoning.data import encode_prompt

    tokenizer = load_tokenizer(ckpt("llada"))
    ids = encode_prompt(tokenizer, "x = 3")
    text = tokenizer.decode(ids)
    assert text == ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nx = 3<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert encode_prompt(tokenizer, "x = 3", chat_template="none") == tokenizer("x = 3")["input_ids"]
    conversation = [{"role": "user", "content": "x = 3"}]
    assert encode_prompt(tokenizer, conversation) == ids  # a TRL conversational prompt renders the same


def test_dream_tokenizer_from_vocab_and_merges_without_remote_code(tmp_path):
    """Dream ships vocab.json + merges.txt with tokenizer_class DreamTokenizer and an auto_map to its
    own tokenization_dream.py (absent here, as in any run that refuses remote code)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    # Qwen2's byte-level BPE pipeline: its split pattern (digits one by one), then byte-level mapping
    qwen2_split = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                   r"\s*[\r\n]+|\s+(?!\S)|\s+")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(qwen2_split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
    backend.train_from_iterator(["x = 3 is the answer", "solve for x", "the sum of 12 and 30"] * 20,
                                trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.model.save(str(tmp_path))  # vocab.json + merges.txt
    settings = {"tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer",
                                                                                   None]},
                "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>",
                "added_tokens_decoder": {str(backend.token_to_id(t)): {"content": t, "special": True}
                                         for t in specials}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(settings))
    tokenizer = load_tokenizer(str(tmp_path))
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == backend.token_to_id("<|endoftext|>")
    assert tokenizer.mask_token_id == backend.token_to_id("<|mask|>")
    ids = tokenizer("solve for x = 3", add_special_tokens=False)["input_ids"]
    assert ids == backend.encode("solve for x = 3").ids and tokenizer.decode(ids) == "solve for x = 3"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == backend.token_to_id("<|im_end|>")


# --- bad checkpoints: one clear error naming the file and tensor ----------------------------

def test_bad_checkpoints_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(ModelConfig(path=str(tmp_path)))
    unknown = tmp_path / "unknown"
    shutil.copytree(ckpt("llada"), unknown)
    config = json.load(open(unknown / "config.json"))
    json.dump({**config, "model_type": "mystery", "architectures": ["MysteryLM"]}, open(unknown / "config.json", "w"))
    with pytest.raises(ConfigError, match="mystery.*known: llada"):
        load_model(ModelConfig(path=str(unknown)))

    tensors = load_file(os.path.join(ckpt("llada"), "model.safetensors"))
    cases = {
        "missing": ({k: v for k, v in tensors.items() if k != "model.transformer.blocks.1.up_proj.weight"},
                    r"lack 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"),
        "extra": ({**tensors, "model.transformer.blocks.0.extra.weight": torch.zeros(2)},
                  r"model\.safetensors: tensor 'model\.transformer\.blocks\.0\.extra\.weight' is not part"),
        "shape": ({**tensors, "model.transformer.blocks.0.q_proj.weight": torch.zeros(32, 16)},
                  r"model\.safetensors: tensor 'model\.transformer\.blocks\.0\.q_proj\.weight' has shape \[32, 16\]"),
    }
    for name, (state, message) in cases.items():
        bad = tmp_path / name
        shutil.copytree(ckpt("llada"), bad)
        save_file(state, str(bad / "model.safetensors"))
        with pytest.raises(ConfigError, match=message):
            load_model(ModelConfig(path=str(bad)))
        assert main(["sample", str(bad), "--prompt", "x"]) == 2  # the CLI: one line, exit 2


# --- the whole user path by path only: sample, eval, RL, export ------------------------------

RL = """
name: {name}
output_dir: {out}
data: {{task: trl, test_size: 2, task_args: {{path: {data}, reward: {eval_reward}}}}}
model: {{path: {model}, lora: {{enabled: true, r: 4}}}}
rollout: {{gen_length: 8, steps: 4, temperature: 1.0, group_size: 4}}
rewards: {rewards}
trainer: {{steps: 2, prompts_per_step: 2, lr: 0.05, micro_batch_size: 8, checkpoint_every: 0}}
eval: {{n: 2}}
logging: {{tensorboard: false, progress: false}}
"""


def write_dataset(path, conversational: bool):
    """A TRL GRPO dataset as a user brings it: prompt (+ extra columns the rewards receive)."""
    with open(path, "w") as fh:
        for i in range(8):
            text = f"x = {i}"
            prompt = [{"role": "user", "content": text}] if conversational else text
            fh.write(json.dumps({"prompt": prompt, "solution": str(i)}) + "\n")


@pytest.mark.parametrize("kind", KINDS)
def test_sample_eval_train_export_by_path(kind, tmp_path, capsys):
    vowels = os.path.join(HERE, "reward_fns.py") + ":vowel_share"
    data = tmp_path / "data.jsonl"
    if kind == "llada":  # a TRL conversational dataset and TRL's own reward, unconverted
        write_dataset(data, conversational=True)
        rewards = f"[{{name: think_format_reward}}, {{fn: '{vowels}'}}]"
        eval_reward = "think_format_reward"
    else:
        write_dataset(data, conversational=False)
        rewards = f"[{{fn: '{vowels}'}}]"
        eval_reward = f"'{vowels}'"
    config = tmp_path / "rl.yaml"
    config.write_text(RL.format(name=kind, out=tmp_path / "runs", data=data, eval_reward=eval_reward,
                                model=ckpt(kind), rewards=rewards))

    assert main(["sample", ckpt(kind), "--prompt", "x = 3", "rollout.gen_length=8", "--output",
                 str(tmp_path / "sample")]) == 0
    sampled = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sampled["prompt"] == "x = 3" and sampled["steps"] >= 1

    assert main(["eval", str(config), "--output", str(tmp_path / "eval")]) == 0
    evaluated = json.load(open(tmp_path / "eval" / "eval.json"))
    assert evaluated["n"] == 2 and 0.0 <= evaluated["accuracy"] <= 1.0
    assert main(["eval", ckpt(kind), "--task", "addition", "--n", "2", "rollout.gen_length=8",
                 "--output", str(tmp_path / "eval_dir")]) == 0  # a plain snapshot, no config at all
    assert json.load(open(tmp_path / "eval_dir" / "eval.json"))["task"] == "addition"

    assert main(["train", str(config)]) == 0
    run = tmp_path / "runs" / kind
    steps = [json.loads(line) for line in open(run / "metrics.jsonl") if '"reward"' in line]
    assert [m["step"] for m in steps] == [1, 2]
    if kind == "llada":
        assert all("rewards/think_format_reward/mean" in m for m in steps)
    assert steps[-1]["policy_version"] >= 1  # the adapter was updated

    out = tmp_path / "exported"
    assert main(["export", str(run), str(out)]) == 0
    assert tensor_names(out) == tensor_names(ckpt(kind))  # original names, files and dtypes
    assert json.load(open(out / "config.json")) == json.load(open(os.path.join(ckpt(kind), "config.json")))

    from peft import PeftModel

    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    adapted = PeftModel.from_pretrained(load_pretrained(ckpt(kind)), str(checkpoint / "adapter")).eval()
    ids = reference(kind)["input_ids"]
    exported = logits_of(load_pretrained(str(out)), ids)
    assert (exported - logits_of(adapted, ids)).abs().max() < 1e-5
    assert (exported - logits_of(load_pretrained(ckpt(kind)), ids)).abs().max() > 1e-4  # RL changed the model

    # the lm-eval model takes all three: the run checkpoint (adapter applied) scores as its export does
    from reasoning.harness import DlmrlLM

    request = [(None, [5, 6, 7], [8, 9, 10])]
    scores = {name: DlmrlLM(pretrained=path, mc_num=8, mc_batch_size=8, check_greedy=False)
              ._loglikelihood_tokens(request)[0][0]
              for name, path in (("run", str(checkpoint)), ("export", str(out)), ("base", ckpt(kind)))}
    assert abs(scores["run"] - scores["export"]) < 1e-3 and abs(scores["run"] - scores["base"]) > 1e-3, scores


def test_remote_code_that_fails_to_import_names_the_native_family(tmp_path):
    """`remote` stays an explicit opt-in; LLaDA's own code fails under transformers 5 (measured:
    AttributeError all_tied_weights_keys) — here a stand-in file that fails the same way."""
    snapshot = tmp_path / "llada"
    shutil.copytree(ckpt("llada"), snapshot)
    (snapshot / "configuration_llada.py").write_text(
        "raise AttributeError(\"'LLaDAModelLM' object has no attribute 'all_tied_weights_keys'\")\n")
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_model(ModelConfig(family="remote", path=str(snapshot)))
    with pytest.raises(ConfigError, match=r"failed to load.*all_tied_weights_keys.*use model\.family: llada"):
        load_model(ModelConfig(family="remote", trust_remote_code=True, path=str(snapshot)))
    assert load_model(ModelConfig(path=str(snapshot)))[0].config.dlm_family == "llada"  # auto never runs it


def test_only_bare_key_value_tokens_are_overrides(tmp_path, capsys):
    for prompt in ("x = 3", "a=b", "rollout.gen_length=4"):
        assert main(["sample", ckpt("llada"), "--prompt", prompt, "rollout.gen_length=8", "--output",
                     str(tmp_path)]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["prompt"] == prompt
        assert len(json.loads(open(out["trajectory"]).readline())["final_tokens"]) == 8
    with pytest.raises(SystemExit) as exit_info:  # a stray token is not silently dropped
        main(["sample", ckpt("llada"), "--prompt", "x", "rollout.gen_length"])
    assert exit_info.value.code == 2
    assert "rollout.gen_length" in capsys.readouterr().err


def test_trl_reward_functions_by_name_run_unchanged():
    """TRL's own reward functions, named in `rewards:` next to ours, score exactly what calling them
    directly scores (conversational prompts -> chat-format completions, as in TRL)."""
    import trl.rewards

    from rewards import RewardRunner, RewardSpec, RewardsConfig

    prompts = [[{"role": "user", "content": "2+2?"}]] * 3
    completions = ["<think>easy</think>$4$", "no think $5$", "<think>a</think><think>b</think> $4$"]
    ids = [[1, 2, 3, 1, 2, 3, 1, 2, 3], [4, 5], [6] * 12]
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    columns = {"solution": ["$4$"] * 3}
    specs = {
        "think_format_reward": (None, trl.rewards.think_format_reward),
        "accuracy_reward": (None, trl.rewards.accuracy_reward),
        "get_cosine_scaled_reward": ({"max_len": 50}, trl.rewards.get_cosine_scaled_reward(max_len=50)),
        "get_repetition_penalty_reward": ({"ngram_size": 3, "max_penalty": -1.0},
                                          trl.rewards.get_repetition_penalty_reward(3, -1.0)),
        "get_soft_overlong_punishment": ({"max_completion_len": 10, "soft_punish_cache": 4},
                                         trl.rewards.get_soft_overlong_punishment(10, 4)),
    }
    config = RewardsConfig(functions=[RewardSpec(name=n, args=a) for n, (a, _) in specs.items()], on_error="raise")
    with RewardRunner(config) as runner:
        scored = runner(prompts, completions, ids, **columns)
    for (name, (args, fn)), spec in zip(specs.items(), config.functions):
        direct = fn(prompts=prompts, completions=chat, completion_ids=ids, **columns)
        assert scored.per_function[spec.label] == pytest.approx(direct), name
    assert scored.per_function["think_format_reward"] == [1.0, 0.0, 0.0]
    assert len(set(map(tuple, scored.per_function.values()))) > 2  # five functions, not one score copied


def test_a_full_fine_tune_with_family_llada_exports_in_the_snapshot_format(tmp_path):
    """SFT with `model.family: llada` (not auto) saves the native model; its checkpoint loads back as
    that family and exports with the snapshot's own names, files, dtypes and config.json."""
    from reasoning.checkpoint import load_checkpoint
    from reasoning.config import load_config
    from reasoning.sft import run_sft

    cfg = load_config(None, [f"model.path={ckpt('llada')}", "model.family=llada", "data.task=addition",
                             "data.train_size=16", "data.test_size=2", "rollout.gen_length=24", "sft.steps=2",
                             "sft.batch_size=4", "sft.lr=1e-2", "sft.eval_every=0", "eval.n=2",
                             "logging.progress=false", f"output_dir={tmp_path}", "name=sft"])
    result = run_sft(cfg)
    out = tmp_path / "exported"
    assert main(["export", cfg.run_dir, str(out)]) == 0
    assert tensor_names(out) == tensor_names(ckpt("llada"))
    assert json.load(open(out / "config.json")) == json.load(open(os.path.join(ckpt("llada"), "config.json")))
    ids = reference("llada")["input_ids"]
    trained = logits_of(load_checkpoint(result["checkpoint"], family="llada")[0], ids)
    exported = logits_of(load_pretrained(str(out)), ids)
    assert (exported - trained).abs().max() < 1e-5
    assert (exported - logits_of(load_pretrained(ckpt("llada")), ids)).abs().max() > 1e-4  # SFT changed it
