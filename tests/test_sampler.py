"""The denoising sampler, its trajectories and replay (docs/architecture.md, invariants 1 and 2)."""

import numpy as np
import pytest
import torch

from rollouts import DecodingConfig, DiffusionPolicy, TokenIds, load_jsonl, replay, sample, save_jsonl
from rollouts.decoding import commit_schedule, left_pad

POLICIES = {
    "low_confidence": dict(),
    "random": dict(commit="random"),
    "threshold": dict(commit="threshold", threshold=0.02),
    "stochastic_selection": dict(selection_temperature=0.05, temperature=1.0),
    "margin_entropy": dict(confidence="margin", selection_temperature=0.1, temperature=0.8),
    "revision": dict(remask="running_confidence", remask_threshold=0.05, remask_budget=6),
    "latent": dict(latent_steps=2, latent_mix=0.7),
    "everything": dict(commit="threshold", threshold=0.02, confidence="entropy", selection_temperature=0.2,
                       temperature=0.9, remask="running_confidence", remask_threshold=0.05, latent_steps=1),
}
BLOCKS = {"parallel": dict(gen_length=12), "semi_ar": dict(gen_length=12, block_length=4, steps=6)}


@pytest.fixture
def policy(tiny_model, tiny_tokenizer):
    with torch.no_grad():  # sharper than a fresh init, so confidences differ between positions
        for p in tiny_model.parameters():
            if p.dim() == 2:
                p.mul_(3)
    return DiffusionPolicy(tiny_model, TokenIds.from_tokenizer(tiny_tokenizer))


@pytest.fixture
def prompts(tiny_tokenizer):
    return [tiny_tokenizer(text)["input_ids"] for text in ("abc", "use 3 5 7 to make 22", "x", "sudoku 12..")]


def observe_canvases(policy):
    """Record every answer canvas the model is called on (the sampler's view of each state)."""
    seen = []
    original = policy.step_log_probs

    def spy(prompt_ids, prompt_mask, answer, *args):
        seen.append(answer.clone())
        return original(prompt_ids, prompt_mask, answer, *args)

    policy.step_log_probs = spy
    return seen


def test_commit_schedule_splits_evenly():
    assert commit_schedule(10, 4) == [3, 3, 2, 2]
    assert sum(commit_schedule(7, 7)) == 7


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("blocks", BLOCKS)
@pytest.mark.parametrize("name", POLICIES)
def test_replay_matches_behaviour_log_probs(policy, prompts, name, blocks):
    cfg = DecodingConfig(**BLOCKS[blocks], **POLICIES[name])
    trajectories = sample(policy, prompts, cfg, seeds=[11, 12, 13, 14])
    replayed = replay(policy, trajectories, cfg, micro_batch=5)  # batches cut across trajectories
    for traj, token_logp, selection_logp in zip(trajectories, replayed.token_logp, replayed.selection_logp):
        behaviour = torch.as_tensor(traj.event_logp[traj.commits])
        assert token_logp.shape == behaviour.shape and token_logp.requires_grad
        assert (token_logp.detach() - behaviour).abs().max() < 1e-4
        assert (selection_logp.detach() - torch.as_tensor(traj.selection_logp)).abs().max() < 1e-4
        assert np.isfinite(traj.event_logp[traj.commits]).all() and (traj.event_logp[traj.commits] <= 0).all()
    if POLICIES[name].get("selection_temperature") or name == "random":
        assert any((t.selection_logp < 0).any() for t in trajectories)  # the choice of positions is scored
    if name in ("revision", "everything"):
        assert sum(t.num_remasks for t in trajectories) > 0  # the test exercised revisions


def test_replay_gradients_reach_the_weights(policy, prompts):
    cfg = DecodingConfig(gen_length=8, selection_temperature=0.1, temperature=1.0, latent_steps=1)
    trajectories = sample(policy, prompts, cfg, seeds=[1, 2, 3, 4])
    replayed = replay(policy, trajectories, cfg)
    total = sum(s.sum() for s in replayed.step_logp(trajectories))
    total.backward()
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_replay_merge_steps_uses_fewer_forwards(policy, prompts):
    cfg = DecodingConfig(gen_length=12, block_length=4, steps=12)
    trajectories = sample(policy, prompts, cfg, seeds=[1, 2, 3, 4])
    exact = replay(policy, trajectories, cfg, merge_steps=1, micro_batch=4)
    merged = replay(policy, trajectories, cfg, merge_steps=3, micro_batch=4)
    assert merged.forward_passes * 3 == exact.forward_passes
    for a, b in zip(exact.token_logp, merged.token_logp):
        assert a.shape == b.shape and torch.isfinite(b).all()
    # the first step of every merged group is scored from its own state: identical there
    first = [t.event_step[t.commits] % 3 == 0 for t in trajectories]
    for a, b, keep in zip(exact.token_logp, merged.token_logp, first):
        assert torch.allclose(a[torch.as_tensor(keep)], b[torch.as_tensor(keep)], atol=1e-5)
    with pytest.raises(ValueError, match="merge_steps"):
        replay(policy, trajectories, cfg, merge_steps=0)


@pytest.mark.parametrize("name", ["revision", "everything", "threshold"])
def test_state_at_rebuilds_every_visited_canvas(policy, prompts, name):
    cfg = DecodingConfig(**BLOCKS["semi_ar"], **POLICIES[name])
    seen = observe_canvases(policy)
    trajectories = sample(policy, prompts[:1], cfg, seeds=[5])
    traj = trajectories[0]
    assert len(seen) == traj.num_steps
    for t, canvas in enumerate(seen):
        assert np.array_equal(traj.state_at(t), canvas[0].numpy())
        assert np.array_equal(traj.states()[t], canvas[0].numpy())
    last = traj.state_at(traj.num_steps)
    assert np.array_equal(last, traj.final_tokens) and (last != traj.mask_id).all()
    # compact: events, not canvases — at most one event per commit or re-mask
    assert len(traj.event_step) == cfg.gen_length + 2 * traj.num_remasks


def test_trajectory_jsonl_round_trip(policy, prompts, tmp_path):
    cfg = DecodingConfig(**BLOCKS["parallel"], **POLICIES["everything"])
    trajectories = sample(policy, prompts, cfg, seeds=[1, 2, 3, 4], pinned=[{0: 5}, None, None, None])
    path = tmp_path / "rollouts.jsonl"
    save_jsonl(trajectories, str(path))
    loaded = load_jsonl(str(path))
    for a, b in zip(trajectories, loaded):
        for key, value in a.__dict__.items():
            other = b.__dict__[key]
            if isinstance(value, np.ndarray):
                assert value.dtype == other.dtype and np.array_equal(value, other, equal_nan=True), key
            else:
                assert value == other, key
        assert np.array_equal(a.state_at(3), b.state_at(3))


def test_pinned_tokens_never_change(policy, prompts, tiny_tokenizer):
    digit = tiny_tokenizer.convert_tokens_to_ids("7")
    pins = [{0: digit, 5: digit}, {3: digit}, {}, {11: digit}]
    cfg = DecodingConfig(**BLOCKS["semi_ar"], remask="running_confidence", remask_threshold=0.9)
    seen = observe_canvases(policy)
    trajectories = sample(policy, prompts, cfg, seeds=[1, 2, 3, 4], pinned=pins)
    for row, (traj, pin) in enumerate(zip(trajectories, pins)):
        for position, token in pin.items():
            assert traj.final_tokens[position] == token
            assert position not in traj.event_position  # never committed, never re-masked
            assert all(traj.state_at(t)[position] == token for t in range(traj.num_steps + 1))
    assert all((canvas[0, [0, 5]] == digit).all() for canvas in seen)
    with pytest.raises(ValueError, match="pinned position 12"):
        sample(policy, prompts[:1], cfg, seeds=[0], pinned=[{12: digit}])


def test_eos_stops_later_blocks(policy, prompts, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    cfg = DecodingConfig(gen_length=12, block_length=4, steps=12)
    # pin [EOS] in the first block of sample 0: its blocks 2 and 3 must not be decoded
    trajectories = sample(policy, prompts[:2], cfg, seeds=[1, 2], pinned=[{2: eos}, None])
    stopped, full = trajectories
    assert stopped.num_steps == 3 and stopped.forward_passes == 3
    assert (stopped.event_position < 4).all()
    assert (stopped.final_tokens[4:] == eos).all()
    assert full.num_steps == 12 or (full.final_tokens == eos).any()


def test_greedy_decoding_is_padding_and_batch_invariant(policy, prompts):
    cfg = DecodingConfig(gen_length=8, temperature=0.7, selection_temperature=0.3)
    alone = sample(policy, prompts[:1], cfg, seeds=[9])[0]
    batched = sample(policy, prompts[::-1], cfg, seeds=[0, 0, 0, 9])[3]
    assert np.array_equal(alone.final_tokens, batched.final_tokens)
    assert np.array_equal(alone.event_position, batched.event_position)


def test_threshold_commits_in_parallel_and_latent_changes_beliefs(policy, prompts):
    fixed = sample(policy, prompts, DecodingConfig(gen_length=12), seeds=[1, 2, 3, 4])
    fast = sample(policy, prompts, DecodingConfig(gen_length=12, commit="threshold", threshold=0.02),
                  seeds=[1, 2, 3, 4])
    assert sum(t.num_steps for t in fast) < sum(t.num_steps for t in fixed)
    latent = sample(policy, prompts, DecodingConfig(gen_length=12, latent_steps=2), seeds=[1, 2, 3, 4])
    assert latent[0].forward_passes == 3 * 12
    assert any(not np.array_equal(a.final_tokens, b.final_tokens) for a, b in zip(fixed, latent))


@pytest.mark.parametrize("kwargs,setting", [
    (dict(gen_length=10, block_length=3), "block_length"),
    (dict(gen_length=8, steps=9), "steps"),
    (dict(gen_length=16, block_length=4, steps=2), "steps"),
    (dict(commit="top_k"), "commit"),
    (dict(confidence="logit"), "confidence"),
    (dict(latent_mix=1.5), "latent_mix"),
])
def test_bad_decoding_settings_are_rejected(kwargs, setting):
    with pytest.raises(ValueError, match=f"'{setting}'"):
        DecodingConfig(**kwargs)


def test_prompt_longer_than_context_is_rejected(policy, tiny_tokenizer):
    long_prompt = tiny_tokenizer("x" * 60)["input_ids"]
    with pytest.raises(ValueError, match="gen_length.*max_position_embeddings"):
        sample(policy, [long_prompt], DecodingConfig(gen_length=8), seeds=[0])


def test_unknown_decoding_option_in_config_names_the_key():
    from reasoning.config import load_config
    from reasoning.schema import ConfigError

    with pytest.raises(ConfigError, match="rollout.remask_treshold.*remask_threshold"):
        load_config(None, ["rollout.remask_treshold=0.5"])
    with pytest.raises(ConfigError, match="eval.decoding.latent_step"):
        load_config(None, ["eval.decoding={latent_step: 2}"]).eval_decoding()
