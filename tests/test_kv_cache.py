"""Block KV caches for the sampler (`decoding.cache: none | prefix | dual`, rollouts/kv_cache.py):
at every block's first step the cached sampler's log-probs are exactly the cache-free model's
(computed here from the model's raw logits at that state), later steps are an approximation
that the trajectory records as such, and the trainer corrects it."""

import os

import numpy as np
import pytest
import torch
from test_realarch import ckpt
from helpers import config, train_steps

from reasoning.rl import run_rl
from reasoning.schema import ConfigError
from rollouts import DecodingConfig, load_pretrained, load_tokenizer, make_policy, replay, sample


def tiny_policy(tiny_model, tiny_tokenizer, shift=False):
    return make_policy(tiny_model, tiny_tokenizer, shift_logits=shift)


def block_starts(trajectory, width):
    """Steps at which the trajectory entered each block (the cache's full forward): every step
    commits at least one token, so a block's first commit is made at its first step."""
    commits = trajectory.commits
    return {int(trajectory.event_step[commits & (trajectory.event_position // width == b)].min())
            for b in range(trajectory.gen_length // width)
            if (commits & (trajectory.event_position // width == b)).any()}


def check_block_starts_exact(policy, trajectories, cfg):
    """Every commit made at a block's first step has exactly the cache-free log-prob, computed here
    as log softmax(logits / T) over every token but [MASK] from the raw logits at that state."""
    checked = 0
    for t in trajectories:
        states = t.states()
        prompt = torch.tensor([t.prompt_ids])
        for step in block_starts(t, cfg.block):
            at = (t.event_step == step) & t.commits
            if not at.any():
                continue
            canvas = torch.cat([prompt, torch.as_tensor(states[step]).unsqueeze(0)], 1)
            with torch.no_grad():
                logits = policy.logits(attention_mask=torch.ones_like(canvas), input_ids=canvas,
                                       keep=t.gen_length)[0].float()
            logits[:, policy.ids.mask] = -1e9
            logp = (logits / cfg.temperature).log_softmax(-1)
            expected = logp[t.event_position[at], t.event_token[at]]
            assert torch.allclose(torch.as_tensor(t.event_logp[at]), expected, atol=1e-5, rtol=0), step
            checked += int(at.sum())
    assert checked > 0


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_block_start_log_probs_are_exact_and_later_ones_approximate(tiny_model, tiny_tokenizer, mode, shift):
    policy = tiny_policy(tiny_model, tiny_tokenizer, shift)
    cfg = DecodingConfig(gen_length=16, block_length=4, steps=16, temperature=1.0, cache=mode)
    prompts = [tiny_tokenizer.encode("12+34="), tiny_tokenizer.encode("7+8="), tiny_tokenizer.encode("5")]
    trajectories = sample(policy, prompts, cfg, seeds=[1, 2, 3])
    assert block_starts(trajectories[0], 4) == {0, 4, 8, 12}
    check_block_starts_exact(policy, trajectories, cfg)
    assert all(t.cache == mode for t in trajectories)
    # later steps read stale keys/values: close to the full-attention replay, but not equal
    gaps = [np.abs(t.event_logp[t.commits] - r.detach().numpy()) for t, r in
            zip(trajectories, replay(policy, trajectories, cfg).token_logp)]
    assert 0 < max(g.max() for g in gaps) < 1.0


def test_cache_none_is_the_exact_sampler_and_caches_compute_fewer_tokens(tiny_model, tiny_tokenizer):
    policy = tiny_policy(tiny_model, tiny_tokenizer)
    prompts = [tiny_tokenizer.encode("12+34="), tiny_tokenizer.encode("7+8=")]
    runs = {mode: sample(policy, prompts, DecodingConfig(gen_length=16, block_length=4, steps=16, temperature=1.0,
                                                         cache=mode), seeds=[4, 5])
            for mode in ("none", "prefix", "dual")}
    default = sample(policy, prompts, DecodingConfig(gen_length=16, block_length=4, steps=16, temperature=1.0),
                     seeds=[4, 5])
    for a, b in zip(runs["none"], default):
        assert np.array_equal(a.event_token, b.event_token) and np.array_equal(a.event_logp, b.event_logp)
    replayed = replay(policy, runs["none"], DecodingConfig(gen_length=16, block_length=4, steps=16, temperature=1.0))
    for t, r in zip(runs["none"], replayed.token_logp):
        assert np.abs(t.event_logp[t.commits] - r.detach().numpy()).max() < 1e-5  # exact: the replay reproduces it
    canvas = len(tiny_tokenizer.encode("12+34=")) + 16  # left-padded to the longer prompt
    assert runs["none"][0].forward_tokens == 16 * canvas
    tokens = {mode: sum(t.forward_tokens for t in runs[mode]) for mode in runs}
    assert tokens["dual"] < tokens["prefix"] < tokens["none"]


def test_mixed_prompt_lengths_eos_pins_and_threshold(tiny_model, tiny_tokenizer):
    """Left padding, a pinned token, threshold commits (rows leave blocks at different steps) and
    an EOS-biased model (rows stop early) through both caches: block starts stay exact."""
    eos = tiny_tokenizer.eos_token_id
    handle = tiny_model.lm_head.register_forward_hook(lambda module, args, out: out.index_add(
        -1, torch.tensor([eos]), torch.full(out.shape[:-1] + (1,), 2.0)))
    try:
        policy = tiny_policy(tiny_model, tiny_tokenizer)
        prompts = [tiny_tokenizer.encode("1234567+1="), tiny_tokenizer.encode("9"), tiny_tokenizer.encode("55+5=")]
        for mode in ("prefix", "dual"):
            cfg = DecodingConfig(gen_length=12, block_length=4, steps=12, temperature=1.0, commit="threshold",
                                 threshold=0.3, cache=mode)
            trajectories = sample(policy, prompts, cfg, seeds=[7, 8, 9], pinned=[{5: 7}, None, None])
            assert trajectories[0].final_tokens[5] == 7
            check_block_starts_exact(policy, trajectories, cfg)
    finally:
        handle.remove()


@pytest.mark.parametrize("kind", ["llada", "dream"])
def test_real_formats_block_starts_exact(kind):
    """The LLaDA and Dream formats (Dream with its logit shift) through both caches."""
    model = load_pretrained(ckpt(kind)).eval()
    policy = make_policy(model, load_tokenizer(ckpt(kind)))
    for mode in ("prefix", "dual"):
        cfg = DecodingConfig(gen_length=8, block_length=4, steps=8, temperature=1.0, cache=mode)
        trajectories = sample(policy, [[80, 11, 42], [12, 13]], cfg, seeds=[0, 1])
        check_block_starts_exact(policy, trajectories, cfg)


def test_bad_cache_settings_are_refused(tiny_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="cache"):
        DecodingConfig(gen_length=8, cache="dual")  # no blocks
    with pytest.raises(ValueError, match="cache"):
        DecodingConfig(gen_length=8, block_length=4, cache="prefix", latent_steps=1)
    with pytest.raises(ValueError, match="cache"):
        DecodingConfig(gen_length=8, cache="sideways")
    with pytest.raises(ConfigError, match="rollout.cache"):
        config(tmp_path, "rollout.cache=dual")
    from test_families import save_masked_lm

    save_masked_lm(str(tmp_path / "bert"), tiny_tokenizer)
    policy = make_policy(load_pretrained(str(tmp_path / "bert"), family="masked_lm").eval(), tiny_tokenizer)
    with pytest.raises(ValueError, match="KV cache"):
        sample(policy, [[5, 6]], DecodingConfig(gen_length=8, block_length=4, cache="prefix"), seeds=[0])


def test_rl_with_a_dual_cache_logs_the_behaviour_replay_gap(tmp_path):
    cfg = config(tmp_path, "rollout.block_length=5", "rollout.cache=dual", "trainer.steps=2")
    result = run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert result["steps"] == 2
    gaps = [m["rollout/behaviour_replay_gap"] for m in steps if "rollout/behaviour_replay_gap" in m]
    assert gaps and all(g > 0 for g in gaps)
    assert os.path.isdir(os.path.join(cfg.run_dir, "checkpoints", "step_000002"))
