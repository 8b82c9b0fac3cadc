"""Masked-diffusion SFT end to end on CPU: the loss goes down and the checkpoint loads."""

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from reasoning.checkpoint import load_checkpoint
from reasoning.cli import main
from reasoning.config import load_config
from reasoning.data import collate_sft, tokenize_sft
from reasoning.modeling import load_model
from reasoning.recipe import seed_everything
from reasoning.sft import llada_loss, run_sft
from reasoning.tasks import get_task
from rollouts import DiffusionPolicy, TokenIds

from helpers import tiny_sizes

TINY = [tiny_sizes(max_positions=256), "data.task=sudoku4", "data.train_size=512", "data.test_size=16",
        "rollout.gen_length=20", "rollout.steps=10", "sft.batch_size=32", "sft.lr=3e-3", "sft.eval_every=0",
        "sft.log_every=1", "eval.n=16", "logging.progress=false"]


def fixed_batch_loss(model, tokenizer, cfg):
    """LLaDA loss of `model` on the same 64 training examples and the same masks."""
    task = get_task(cfg.data.task)
    data = tokenize_sft(task.build(cfg.data)["train"].select(range(64)), task, tokenizer, cfg.rollout.gen_length)
    batch = collate_sft(data[:], tokenizer.pad_token_id)
    policy = DiffusionPolicy(model, TokenIds.from_tokenizer(tokenizer))
    with torch.no_grad():
        return llada_loss(policy, batch, 1e-3, 0.0, len(tokenizer), torch.Generator().manual_seed(1)).item()


def test_sft_lowers_loss_and_writes_loadable_checkpoint(tmp_path):
    cfg = load_config(None, TINY + ["sft.steps=30", "sft.micro_batch_size=16", f"output_dir={tmp_path}", "name=s"])
    seed_everything(cfg.seed)
    initial, tokenizer = load_model(cfg.model)  # the same initialisation run_sft starts from
    result = run_sft(cfg)

    ckpt = result["checkpoint"]
    assert os.path.basename(ckpt) == "step_000030"
    model, tok, state = load_checkpoint(ckpt)
    assert state["step"] == 30 and state["task"] == "sudoku4"
    assert AutoModelForCausalLM.from_pretrained(ckpt).config.is_causal is False
    before, after = fixed_batch_loss(initial, tokenizer, cfg), fixed_batch_loss(model, tok, cfg)
    assert after < 0.8 * before, (before, after)

    run = os.path.join(tmp_path, "s")
    assert os.path.isfile(os.path.join(run, "config.yaml"))
    assert os.listdir(os.path.join(run, "tb"))
    lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    losses = [l["loss"] for l in lines if "loss" in l]
    assert len(losses) == 30 and all(l["grad_norm"] > 0 for l in lines if "loss" in l)
    assert any("eval/sudoku4/acc" in l for l in lines)
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".tmp")]


def test_lora_sft_checkpoint_is_a_peft_adapter(tmp_path):
    from peft import PeftModel

    cfg = load_config(None, TINY + ["sft.steps=2", "model.lora.enabled=true", "model.lora.r=4",
                                    f"output_dir={tmp_path}", "name=l"])
    result = run_sft(cfg)
    ckpt = result["checkpoint"]
    assert os.path.isfile(os.path.join(ckpt, "adapter", "adapter_config.json"))
    model, _, state = load_checkpoint(ckpt)
    assert isinstance(model, PeftModel)
    base = AutoModelForCausalLM.from_pretrained(state["base_model"])
    assert PeftModel.from_pretrained(base, os.path.join(ckpt, "adapter")) is not None
    lora = [n for n, _ in model.named_parameters() if "lora_B" in n]
    assert lora and any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main(["sft", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml' not found" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: {stepz: 3}\n")
    assert main(["sft", str(bad)]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err


def test_answer_longer_than_canvas_is_a_clear_error(tmp_path):
    cfg = load_config(None, TINY + ["rollout.gen_length=10", "sft.steps=1", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="rollout.gen_length is 10"):
        run_sft(cfg)


def test_lr_schedule_warms_up_then_decays():
    from reasoning.engine import lr_lambda

    cosine = lr_lambda(warmup_steps=10, total_steps=110, schedule="cosine")
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.55) and cosine(110) == pytest.approx(0.1)
    assert lr_lambda(0, 100, "constant")(50) == 1.0
    done = [0.0]  # RL with a time budget: the decay follows the budget spent, not the step count
    by_budget = lr_lambda(0, 100, "cosine", progress=lambda: done[0])
    assert by_budget(70) == pytest.approx(1.0)
    done[0] = 0.5
    assert by_budget(3) == pytest.approx(0.55)
    done[0] = 1.7
    assert by_budget(4) == pytest.approx(0.1)


@pytest.mark.parametrize("preset", ["zero2", "zero3"])
def test_sft_runs_under_zero_presets(tmp_path, preset):
    cfg = load_config(None, TINY + ["sft.steps=2", f"sft.deepspeed={preset}", f"output_dir={tmp_path}", "name=z"])
    result = run_sft(cfg)
    model, _, state = load_checkpoint(result["checkpoint"])
    assert state["step"] == 2
    assert all(p.numel() > 0 for p in model.parameters())  # full tensors, not ZeRO-3 shards


# --- block-diffusion SFT (sft.objective: block_diffusion) on a tiny SDAR-layout model ---------------------

BLOCK = [*TINY, "model.family=sdar", "rollout.block_length=4", "sft.objective=block_diffusion",
         "rollout.cache=block"]


def test_block_diffusion_loss_is_each_block_predicted_from_the_clean_blocks_before_it():
    """The packed loss equals the rule computed block by block with the model's own block-causal
    attention: canvas = prompt + clean blocks before b + block b noised (later blocks cannot be seen)."""
    import math

    from reasoning.sft import block_diffusion_loss

    cfg = load_config(None, BLOCK)
    torch.manual_seed(0)
    model, tokenizer = load_model(cfg.model)
    model.eval()
    task = get_task("sudoku4")
    data = tokenize_sft(task.build(cfg.data)["train"].select(range(3)), task, tokenizer, 20)
    batch = collate_sft(data[:], tokenizer.pad_token_id)
    policy = DiffusionPolicy(model, TokenIds.from_tokenizer(tokenizer))
    with torch.no_grad():
        packed = block_diffusion_loss(policy, batch, 1e-3, torch.Generator().manual_seed(7)).item()
        generator, expected = torch.Generator().manual_seed(7), 0.0
        for row in range(3):  # the same draws in the same order: a level per block, then a uniform per position
            prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
            answer = batch.answer_ids[row]
            offset, width = len(prompt) % 4, 4
            blocks = math.ceil((20 + offset) / width)
            t = 1e-3 + (1 - 1e-3) * torch.rand(blocks, generator=generator)
            u = torch.rand(20, generator=generator)
            for b in range(blocks):
                span = range(max(b * width - offset, 0), min((b + 1) * width - offset, 20))
                canvas = answer.clone()
                for a in span:
                    if u[a] < t[b]:
                        canvas[a] = tokenizer.mask_token_id
                ids = torch.cat([prompt, canvas[:span.stop]]).unsqueeze(0)
                logits = model(input_ids=ids).logits[0, len(prompt):]
                for a in span:
                    if u[a] < t[b]:
                        expected += torch.nn.functional.cross_entropy(logits[a], answer[a]).item() / t[b].item() / 20
        expected /= 3
    assert packed == pytest.approx(expected, rel=1e-5)


def test_block_diffusion_sft_trains_a_tiny_block_model_that_reloads_as_one(tmp_path):
    cfg = load_config(None, BLOCK + ["sft.steps=20", f"output_dir={tmp_path}", "name=b"])
    result = run_sft(cfg)
    model, _, _ = load_checkpoint(result["checkpoint"])
    assert model.config.dlm_family == "sdar" and model.attention_block_length() == 4
    losses = [json.loads(l)["loss"] for l in open(os.path.join(tmp_path, "b", "metrics.jsonl")) if '"loss"' in l]
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses


def test_block_diffusion_sft_on_a_model_without_blocks_is_refused(tmp_path):
    cfg = load_config(None, [*TINY, "sft.objective=block_diffusion", f"output_dir={tmp_path}", "name=x"])
    from reasoning.schema import ConfigError

    with pytest.raises(ConfigError, match="'sft.objective': block_diffusion trains a block-diffusion model"):
        run_sft(cfg)
    assert not os.path.exists(os.path.join(tmp_path, "x"))
