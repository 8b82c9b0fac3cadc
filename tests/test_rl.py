"""The RL trainer end to end on CPU: objectives, KL reference, ZeRO presets, faults and exact resume."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from reasoning.rl import run_rl
from reasoning.schema import ConfigError

from helpers import ROOT, adapter, cli, config, metrics, torchrun_train, train_steps

@pytest.mark.parametrize("objective", ["trajectory", "mean_field", "coupled", "spg", "wd1"])
def test_two_rl_steps_update_the_adapter_with_ratio_one_at_first(tmp_path, objective):
    cfg = config(tmp_path, f"trainer.objective={objective}", "trainer.inner_steps=2")
    result = run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2] and result["policy_version"] == 2
    ratio_free = objective in ("spg", "wd1")
    for m in steps:
        if ratio_free:  # no PPO ratio: no ratio or clip metrics at all (none faked)
            assert not any(k.startswith(("ratio", "clip_ratio")) for k in m)
        else:
            assert m["ratio/first_inner_max_dev"] < 1e-4 and "clip_ratio/region_mean" in m  # old = the sampler's
        assert m["train/samples"] > 0 and m["skipped_steps"] == 0
        assert {"reward", "reward_std", "rewards/digit_fraction/mean", "entropy",
                "diffusion/steps", "diffusion/tokens_per_step", "timing_s/rollout", "timing_s/update",
                "timing_s/weight_sync", "perf/tokens_per_s", "completions/mean_length", "grad_norm"} <= set(m)
    weights = adapter(cfg.run_dir, 2)
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at 0: the update moved it
    assert any(m.get("eval/sudoku4/acc") is not None for m in metrics(cfg.run_dir))


def test_kl_to_the_adapter_disabled_reference_is_zero_before_the_first_update(tmp_path):
    cfg = config(tmp_path, "trainer.objective.kl_coef=0.1", "trainer.steps=2")
    run_rl(cfg)
    first, second = train_steps(cfg.run_dir)
    assert abs(first["kl"]) < 1e-6  # LoRA B = 0: adapter disabled == enabled
    assert second["kl"] > 0


def test_zero2_single_process_on_cpu(tmp_path):
    cfg = config(tmp_path, "trainer.deepspeed=zero2", "trainer.checkpoint_every=1", "trainer.steps=2",
                 "model.gradient_checkpointing=true")
    run_rl(cfg)
    assert len(train_steps(cfg.run_dir)) == 2
    assert all(m["ratio/first_inner_max_dev"] < 1e-4 for m in train_steps(cfg.run_dir))
    assert os.path.isdir(os.path.join(cfg.run_dir, "checkpoints", "step_000001", "ds"))


def test_rollouts_on_ray_workers(tmp_path):
    pytest.importorskip("ray")
    cfg = config(tmp_path, "ray.enabled=true", "ray.num_workers=2", "trainer.steps=1", "trainer.save_rollouts_every=1")
    run_rl(cfg)
    (step,) = train_steps(cfg.run_dir)
    assert step["policy_version"] == 1
    from rollouts import load_jsonl

    saved = load_jsonl(os.path.join(cfg.run_dir, "rollouts", "step_000001.jsonl"))
    assert len(saved) == 8 and {t.policy_version for t in saved} == {0}


def test_run_survives_a_worker_killed_during_the_weight_sync(tmp_path, monkeypatch):
    """SIGKILL one Ray worker as the second weight sync starts: the run restores it and completes
    every step (issue: ActorUnavailableError from WorkerPool.sync used to end the run)."""
    pytest.importorskip("ray")
    from rollouts.workers import WorkerPool

    original, calls = WorkerPool.sync, []

    def sync_with_a_kill(self, state, version, **kwargs):
        calls.append(version)
        if len(calls) == 2:
            os.kill(self.pids()[0], signal.SIGKILL)
        return original(self, state, version, **kwargs)

    monkeypatch.setattr(WorkerPool, "sync", sync_with_a_kill)
    cfg = config(tmp_path, "ray.enabled=true", "ray.num_workers=2", "trainer.steps=3")
    result = run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2, 3] and result["steps"] == 3
    assert len(calls) >= 3 and steps[-1]["rollout/worker_restarts"] >= 1


def test_non_finite_loss_skips_the_step(tmp_path, monkeypatch):
    from reasoning import objectives

    original = objectives.Objective.loss

    def poisoned(self, *args, **kwargs):
        loss, stats = original(self, *args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(objectives.Objective, "loss", poisoned)
    cfg = config(tmp_path, "trainer.steps=1")
    run_rl(cfg)
    (step,) = train_steps(cfg.run_dir)
    assert step["skipped_steps"] == 1 and step["policy_version"] == 0
    assert all(v.abs().sum() == 0 for k, v in adapter(cfg.run_dir, 1).items() if "lora_B" in k)  # untouched


def test_plain_sgd_optimizer_moves_the_adapter(tmp_path):
    cfg = config(tmp_path, "trainer.optimizer=sgd", "trainer.lr=0.5", "trainer.steps=1", "trainer.checkpoint_every=1")
    run_rl(cfg)
    [step] = train_steps(cfg.run_dir)
    assert step["train/samples"] > 0 and step["skipped_steps"] == 0
    lora_b = [v for k, v in adapter(cfg.run_dir, 1).items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)
    # SGD's step is lr x the clipped gradient (norm <= 1), spread over all entries; Adam's
    # first step would move every touched entry of B (which starts at 0) by ~lr = 0.5.
    assert max(float(v.abs().max()) for v in lora_b) < 0.4


def test_cosine_lr_decays_over_the_run(tmp_path):
    cfg = config(tmp_path, "trainer.lr_schedule=cosine", "trainer.lr=1e-3", "trainer.steps=4")
    run_rl(cfg)
    lrs = [row["lr"] for row in train_steps(cfg.run_dir)]
    # after step k's update the next step's lr is 1e-3 * (0.1 + 0.45 (1 + cos(pi k / 4)))
    assert lrs == sorted(lrs, reverse=True) and 1e-4 <= min(lrs) and lrs[0] < 1e-3 and lrs[-1] < 5e-4


def test_bad_trainer_settings_are_named(tmp_path):
    with pytest.raises(ConfigError, match="trainer.objective"):
        config(tmp_path, "trainer.objective=grpo")
    with pytest.raises(ConfigError, match="trainer.optimizer.*adamw.*sgd.*'adam'"):
        config(tmp_path, "trainer.optimizer=adam")
    with pytest.raises(ConfigError, match="trainer.deepspeed.*zero4"):
        config(tmp_path, "trainer.deepspeed=zero4")
    with pytest.raises(ConfigError, match="trainer.resume.*does not exist"):
        config(tmp_path, "trainer.resume=/no/such/checkpoint")
    with pytest.raises(ConfigError, match="model.lora.target_modules"):
        run_rl(config(tmp_path, "model.lora.target_modules=[attn_q]"))


BRANCHED = ["rollout.branching.enabled=true", "rollout.branching.at=[0.3, 0.6]", "rollout.hints.enabled=true",
            "rollout.hints.fail_reward=0.2", "trainer.save_rollouts_every=1"]


def test_kill_and_resume_repeats_an_uninterrupted_run(tmp_path, extra=BRANCHED):
    """With branching and hints on (a superset of the plain run: trees and hints are seeded too)."""
    reference = cli(tmp_path, "straight", *extra)
    victim = cli(tmp_path, "killed", *extra)
    ckpt = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpt / "step_000002" / "trainer_state.json").exists():
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()[-2000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)  # mid-step (or mid-checkpoint): whatever was in flight is lost
    victim.wait()
    # a directory that looks like a checkpoint but was never completed must be ignored
    (ckpt / "step_000005").mkdir()
    (ckpt / "step_000005" / "adapter").mkdir()
    trained_at_kill = json.loads((ckpt / "step_000002" / "trainer_state.json").read_text())["trained_s"]
    assert trained_at_kill > 0
    resumed = cli(tmp_path, "killed", "trainer.resume=auto", *extra)
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read()[-2000:]
    assert reference.wait(timeout=240) == 0, reference.stderr.read()[-2000:]
    a, b = train_steps(tmp_path / "straight"), train_steps(tmp_path / "killed")
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]  # nothing lost, nothing logged twice
    for x, y in zip(a, b):
        for key in ("reward", "data/cursor", "data/epoch", "policy_version", "loss"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["step"], key)
    # the training-time budget (trainer.max_seconds) counts the time before the kill too
    assert json.loads((ckpt / "step_000006" / "trainer_state.json").read_text())["trained_s"] > trained_at_kill
    final_a, final_b = adapter(tmp_path / "straight", 6), adapter(tmp_path / "killed", 6)
    for key in final_a:
        assert torch.allclose(final_a[key], final_b[key], atol=1e-6)
    if extra:  # the trees sampled after the resume are the uninterrupted run's, event for event
        from rollouts import load_jsonl

        for step in (3, 6):
            name = f"rollouts/step_{step:06d}.jsonl"
            trees = load_jsonl(str(tmp_path / "straight" / name)), load_jsonl(str(tmp_path / "killed" / name))
            assert any(t.branch_step for t in trees[0]) and len(trees[0]) == len(trees[1])
            for x, y in zip(*trees):
                assert (x.seed, x.branch_step, x.sample_index) == (y.seed, y.branch_step, y.sample_index)
                np.testing.assert_array_equal(x.event_token, y.event_token)
                np.testing.assert_allclose(x.event_logp, y.event_logp, atol=1e-6)


def test_two_trainer_processes_with_zero2(tmp_path):
    """torchrun --nproc_per_node 2: prompts split over ranks, ZeRO-2, one checkpoint with both ranks' state."""
    done = torchrun_train(tmp_path, "mp", "trainer.deepspeed=zero2", "trainer.prompts_per_step=4",
                          "trainer.checkpoint_every=1")
    assert done.returncode == 0, done.stderr[-3000:]
    steps = train_steps(tmp_path / "mp")
    assert [m["step"] for m in steps] == [1, 2]  # rank 0 logs, once per step
    assert steps[0]["train/samples"] <= 8  # each rank trains on its own half of the 4 prompts x 4 samples
    # metrics cover both ranks: 16 answers in all, not rank 0's 8
    assert steps[0]["completions/total_tokens"] == pytest.approx(16 * steps[0]["completions/mean_length"])
    ds = tmp_path / "mp" / "checkpoints" / "step_000002" / "ds"
    assert (ds / "rng_rank0.pt").exists() and (ds / "rng_rank1.pt").exists()


@pytest.mark.parametrize("model", ["tiny", "llada2_moe"])
def test_zero3_lora_sync_gathers_the_partitioned_adapter(tmp_path, model):
    """torchrun --nproc_per_node 2 with ZeRO-3 (every tensor partitioned): after one update and a
    sync, each rank's rollout worker holds exactly the trainer's full adapter and gives its logits.
    Without gathering, the shipped tensors are empty shards and the worker cannot load them.
    llada2_moe: the LLaDA2 fixture with LoRA on its stacked experts too (model.lora.target_parameters)."""
    import re

    from reasoning.modeling import TinyModelConfig, build_char_tokenizer, build_tiny_model

    base = tmp_path / "base"
    if model == "tiny":
        tokenizer = build_char_tokenizer()
        build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                         max_positions=64), tokenizer).save_pretrained(base)
        tokenizer.save_pretrained(base)
    else:
        base = os.path.join(ROOT, "tests", "fixtures", "blockarch", "llada2", "ckpt")
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run([torchrun, "--nproc_per_node", "2", os.path.join(ROOT, "tests", "zero3_sync_check.py"),
                           str(base), str(tmp_path), *(["moe"] if model != "tiny" else [])],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    reports = [json.loads(r) for r in re.findall(r'\{"rank"[^{}]*\}', done.stdout)]  # the ranks' lines may interleave
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert all(r["ok"] and r["max_weight_diff"] == 0.0 and r["max_abs_lora_B"] > 0 for r in reports)
    if model != "tiny":
        assert all(r["tensors"] > 8 for r in reports)  # q/v of 2 layers (8) plus the experts' adapters
