"""Learning from every rollout: inpainting hints (IGPO), dynamic sampling (DAPO) and their metrics.

The gradient checks look at the logits themselves (every forward's answer logits, captured where
the policy turns them into log-probs), not at any mask the objectives compute."""

import json
import os
import signal
import time
import warnings

import numpy as np
import pytest
import torch

from reasoning.config import load_config
from reasoning.groups import GroupCollector, hint_pins, split_groups
from reasoning.objectives import StepBatch, build_objective
from reasoning.preflight import check_rl_inputs
from reasoning.rl import run_rl
from reasoning.data import encode_prompt
from rewards import RewardRunner
from rollouts import DecodingConfig, make_policy
from rollouts.workers import SampleJob, make_jobs, sample_jobs

from helpers import TINY, adapter, cli, metrics, train_steps

OBJECTIVES = ["trajectory", "mean_field", "coupled", "spg", "wd1"]


def test_hint_pins_reveal_reference_chunks_and_always_the_last():
    reference = list(range(100, 130))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        pins = hint_pins(reference, (0.2, 0.6), (2, 4), rng)
        assert all(reference[p] == token for p, token in pins.items())  # at their own positions
        assert reference[-1] in pins.values()  # the last chunk is revealed
        assert 0 < len(pins) < len(reference)
    full = hint_pins(reference, (1.0, 1.0), (2, 4), np.random.default_rng(0))
    assert full == dict(enumerate(reference))


# --- gradients: pinned tokens are not the policy's actions ---------------------------------------

def hinted_pair(model, tokenizer):
    """Two answers to one prompt, sampled with the same five pinned tokens, labelled as hinted."""
    policy = make_policy(model, tokenizer)
    decoding = DecodingConfig(gen_length=12, steps=6, temperature=1.0)
    prompt = tokenizer("sudoku 1200", add_special_tokens=False)["input_ids"]
    digits = tokenizer("34123", add_special_tokens=False)["input_ids"]
    pins = dict(zip([1, 2, 3, 5, 6], digits))
    jobs = [SampleJob(0, s, prompt, 11 + s, pins) for s in range(2)]
    pair = sample_jobs(policy, decoding, jobs, 0)
    for t in pair:
        t.hinted = True
        t.final_tokens[:] = np.where(t.final_tokens == tokenizer.eos_token_id, 5, t.final_tokens)  # no early stop
    return policy, decoding, pair, sorted(pins)


def logit_gradients(policy, objective, batch):
    """|d loss / d logits| summed over every forward and the vocabulary, per answer position."""
    captured = []
    original = policy.answer_log_probs

    def capture(logits, temperature):
        if logits.requires_grad:
            logits.retain_grad()
            captured.append(logits)
        return original(logits, temperature)

    policy.answer_log_probs = capture
    prep = objective.prepare(policy, batch, torch.Generator().manual_seed(0), None, 1)
    units = objective.units(batch, prep)
    loss, _ = objective.loss(policy, batch, prep, list(range(len(batch.trajectories))), units, 0)
    loss.backward()
    policy.answer_log_probs = original
    assert captured
    return sum(c.grad.abs().sum((0, 2)) for c in captured), prep


@pytest.mark.parametrize("objective_name", OBJECTIVES)
def test_pinned_tokens_carry_no_gradient_unless_entropy_selected(tiny_model, tiny_tokenizer, objective_name):
    policy, decoding, pair, pinned = hinted_pair(tiny_model, tiny_tokenizer)
    written = [p for p in range(decoding.gen_length) if p not in pinned]
    extra = {"spg_draws": 16, "spg_block": 4} if objective_name == "spg" else {}
    batch = StepBatch(pair, torch.tensor([1.0, -1.0]), decoding, (tiny_tokenizer.eos_token_id,))

    none = build_objective(objective_name, **extra)
    grad, _ = logit_gradients(policy, none, batch)
    assert all(grad[p] == 0 for p in pinned), grad
    assert all(grad[p] > 0 for p in written), grad

    tiny_model.zero_grad()
    entropy = build_objective(objective_name, train_hints="entropy", hint_entropy_fraction=0.4, **extra)
    grad, prep = logit_gradients(policy, entropy, batch)
    selected = set(prep.hints.keep[0].nonzero().squeeze(1).tolist())
    assert selected == set(prep.hints.keep[1].nonzero().squeeze(1).tolist())  # one prompt, one prediction
    assert len(selected) == 2 and selected <= set(pinned)  # max(1, int(0.4 * 5)) of the pinned tokens
    assert {p for p in pinned if grad[p] > 0} == selected, grad
    assert all(grad[p] > 0 for p in written)


# --- hint-guided groups ---------------------------------------------------------------------------

def collector_parts(tmp_path, *overrides):
    cfg = load_config(None, [f"output_dir={tmp_path}", *TINY, "rewards=[]", "rollout.group_size=4", *overrides])
    task, splits, reward_cfg = check_rl_inputs(cfg)
    from reasoning.modeling import load_model

    model, tokenizer = load_model(cfg.model)
    policy = make_policy(model.eval(), tokenizer)
    decoding = cfg.rollout_decoding()
    return cfg, task, splits["train"], tokenizer, RewardRunner(reward_cfg), policy, decoding


def first_round(cfg, train, tokenizer, policy, decoding, indices):
    prompts = [encode_prompt(tokenizer, p) for p in train.select(indices)["prompt"]]
    return sample_jobs(policy, decoding, make_jobs(prompts, cfg.rollout.group_size, 1), 0)


def test_an_all_wrong_group_gets_hinted_answers_and_nonzero_advantages(tmp_path):
    from reasoning.advantages import group_advantages

    cfg, task, train, tokenizer, rewarder, policy, decoding = collector_parts(
        tmp_path, "rollout.hints.enabled=true", "rollout.hints.ratio=[1.0, 1.0]")
    sample = lambda jobs: sample_jobs(policy, decoding, jobs, 0)  # noqa: E731
    collector = GroupCollector(cfg, task, train, tokenizer, rewarder, policy.ids.stop, sample)
    indices = [0, 1]
    groups = split_groups(indices, first_round(cfg, train, tokenizer, policy, decoding, indices), 4)
    step = collector.collect(1, groups, 2)
    rewarder.close()
    assert step.metrics["train/all_fail_fraction"] == 1.0  # an untrained model solves nothing
    assert step.metrics["hints/groups"] == 2 and step.metrics["hints/success_rate"] == 1.0  # the whole reference
    assert step.metrics["hints/replaced"] == 4  # replace_fraction 0.5 of G = 4, per group
    assert step.metrics["train/informative_fraction"] == 1.0
    for group in step.trained:
        hinted = [t for t in group.trajectories if t.hinted]
        assert len(hinted) == 2 and group.hinted == 2
        reference = tokenizer(task.reference(train[group.index]), add_special_tokens=False)["input_ids"]
        for t in hinted:  # the pins are the reference's tokens at their own positions
            assert [int(t.final_tokens[p]) for p in t.pinned_position] == [reference[p] if p < len(reference)
                                                                           else tokenizer.eos_token_id
                                                                           for p in t.pinned_position]
        assert sorted((t.prompt_index, t.sample_index) for t in group.trajectories) == \
            [(group.trajectories[0].prompt_index, s) for s in range(4)]
        advantages = group_advantages(group.rewards, 4)
        assert advantages.keep.all() and (advantages.values != 0).all()


def test_a_task_without_references_samples_without_hints_after_one_warning(tmp_path):
    cfg, task, train, tokenizer, rewarder, policy, decoding = collector_parts(tmp_path, "rollout.hints.enabled=true")

    class NoReference(type(task)):
        def reference(self, example):
            raise NotImplementedError("no reference answers in this data")

    sampled = []
    sample = lambda jobs: sampled.extend(jobs) or sample_jobs(policy, decoding, jobs, 0)  # noqa: E731
    with pytest.warns(UserWarning, match="rollout.hints.*no reference answers") as caught:
        collector = GroupCollector(cfg, NoReference(), train, tokenizer, rewarder, policy.ids.stop, sample)
        for step in (1, 2):
            first = split_groups([step], first_round(cfg, train, tokenizer, policy, decoding, [step]), 4)
            result = collector.collect(step, first, 1)
    rewarder.close()
    assert len([w for w in caught if "rollout.hints" in str(w.message)]) == 1
    assert sampled == [] and "hints/groups" not in result.metrics


# --- through the loop ----------------------------------------------------------------------------

SOME_INFORMATIVE = "rewards=[{fn: 'reward_fns:odd_blanks_digit_fraction'}]"


def test_without_hints_or_dynamic_sampling_a_step_trains_what_it_sampled(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=plain", *TINY, SOME_INFORMATIVE, "trainer.steps=2",
                             "trainer.prompts_per_step=4"])
    run_rl(cfg)
    for m in train_steps(cfg.run_dir):
        assert not any(k.startswith(("hints/", "dynamic/")) for k in m) and m["train/hinted_samples"] == 0
        informative = m["train/informative_fraction"]
        assert m["train/samples"] == round(informative * 4) * 4  # every group with variance, nothing added
        assert m["frac_reward_zero_std"] == pytest.approx(1 - informative)


def test_dynamic_sampling_fills_every_step_with_informative_groups(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=dyn", *TINY, SOME_INFORMATIVE, "trainer.steps=3",
                             "trainer.prompts_per_step=4", "rollout.dynamic_sampling.enabled=true",
                             "rollout.dynamic_sampling.max_draw_factor=4", "trainer.save_rollouts_every=1"])
    run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert len(steps) == 3
    for m in steps:
        assert m["train/samples"] == 4 * 4  # prompts_per_step groups, every one with reward variance
        assert 1.0 <= m["dynamic/draw_factor"] <= 4.0
        assert 0 < m["train/informative_fraction"] <= 1
    assert any(m["dynamic/draw_factor"] > 1 for m in steps)  # even-blank puzzles give equal rewards


@pytest.mark.parametrize("mode", ["sync", "async", "ray"])
def test_hints_and_dynamic_sampling_run_in_every_rollout_mode(tmp_path, mode):
    extra = {"sync": [], "async": ["rollout.async.enabled=true", "rollout.async.max_staleness=1"],
             "ray": ["ray.enabled=true", "ray.num_workers=1"]}[mode]
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=hints", *TINY, "rewards=[]", "trainer.steps=2",
                             "rollout.hints.enabled=true", "rollout.hints.ratio=[1.0, 1.0]",
                             "rollout.dynamic_sampling.enabled=true", "trainer.save_rollouts_every=1", *extra])
    run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:  # the task reward: an untrained model fails every puzzle, the full hint solves it
        assert m["train/all_fail_fraction"] == 1.0 and m["hints/success_rate"] == 1.0
        assert m["train/informative_fraction"] == 1.0 and m["train/hinted_samples"] == 2 * 2
        assert m["dynamic/draw_factor"] == 1.0 and m["ratio/first_inner_max_dev"] < 1e-4
    saved = [json.loads(line) for line in open(os.path.join(cfg.run_dir, "rollouts", "step_000001.jsonl"))]
    assert sum(row["hinted"] for row in saved) == 4 and all(row["pinned_position"] for row in saved if row["hinted"])
    from reasoning.show import show_trajectories

    hinted_index = next(i for i, row in enumerate(saved) if row["hinted"])
    png, page = show_trajectories(os.path.join(cfg.run_dir, "rollouts", "step_000001.jsonl"), index=hinted_index)
    assert os.path.getsize(png) > 0 and "hint (pinned)" in open(page).read()


def test_dynamic_sampling_killed_and_resumed_repeats_the_uninterrupted_run(tmp_path):
    settings = [SOME_INFORMATIVE, "trainer.prompts_per_step=4", "rollout.dynamic_sampling.enabled=true",
                "rollout.hints.enabled=true"]
    reference = cli(tmp_path, "straight", *settings)
    victim = cli(tmp_path, "killed", *settings)
    ckpt = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpt / "step_000002" / "trainer_state.json").exists():
        assert victim.poll() is None and time.monotonic() < deadline, victim.stderr.read()[-2000:]
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    resumed = cli(tmp_path, "killed", "trainer.resume=auto", *settings)
    assert resumed.wait(timeout=240) == 0, resumed.stderr.read()[-2000:]
    assert reference.wait(timeout=240) == 0, reference.stderr.read()[-2000:]
    a, b = train_steps(tmp_path / "straight"), train_steps(tmp_path / "killed")
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        for key in ("reward", "loss", "dynamic/draw_factor", "train/informative_fraction", "train/samples"):
            assert x[key] == pytest.approx(y[key], abs=1e-6), (x["step"], key)
    final_a, final_b = adapter(tmp_path / "straight", 6), adapter(tmp_path / "killed", 6)
    for key in final_a:
        assert torch.allclose(final_a[key], final_b[key], atol=1e-6)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("train_hints", ["none", "entropy"])
def test_every_objective_trains_on_hinted_groups(tmp_path, objective, train_hints):
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=obj", *TINY, "rewards=[]", "trainer.steps=1",
                             f"trainer.objective={objective}", "trainer.inner_steps=1", "rollout.hints.enabled=true",
                             "rollout.hints.ratio=[1.0, 1.0]", f"rollout.hints.train_hints={train_hints}"])
    run_rl(cfg)
    (m,) = train_steps(cfg.run_dir)
    assert m["train/samples"] == 2 * 4 and m["train/hinted_samples"] == 4 and m["skipped_steps"] == 0
    assert m.get("ratio/first_inner_max_dev", 0.0) < 1e-4  # spg, wd1: no ratio
