"""Credit per denoising step (invariant 14): branching rollouts whose every leaf is an exact,
replayable path; step-level advantages against a hand-computed tree; each event's gradient scaled
by its segment's advantage; intermediate rewards; the temporal_consistency reward; bad input."""

import math
import os

import numpy as np
import pytest
import torch

from reasoning.cli import main
from reasoning.credit import tree_credit
from reasoning.objectives import StepBatch, build_objective
from rollouts import DecodingConfig, make_policy, replay
from rollouts.branching import BranchingConfig, branch_points, sample_tree
from rollouts.jobs import make_jobs, sample_jobs
from rollouts.trajectory import Trajectory

from test_block_decoding import fixture_policy
from test_cli_errors import FAST, write

RULES = {
    "plain": {},
    "blocks": dict(block_length=4),
    "revision": dict(remask="running_confidence", remask_threshold=0.3),
    "latent": dict(latent_steps=1),
    "stochastic selection": dict(selection_temperature=0.5),
    "threshold": dict(commit="threshold", threshold=0.3),
}


def grow(policy, cfg, branching, prompts, group=3, seed=7):
    jobs = make_jobs(prompts, group, seed)
    return sample_tree(lambda j: sample_jobs(policy, cfg, j, 0), jobs, branching, group)


@pytest.mark.parametrize("rule", RULES)
def test_every_leaf_replays_to_its_behaviour_log_probs_and_shares_its_prefix(tiny_model, tiny_tokenizer, rule):
    policy = make_policy(tiny_model, tiny_tokenizer)
    cfg = DecodingConfig(gen_length=12, steps=6, temperature=1.0, **RULES[rule])
    branching = BranchingConfig(enabled=True, branches=3, at=[0.3, 0.6], budget=1000)
    prompts = [tiny_tokenizer("1+2=")["input_ids"], tiny_tokenizer("33+4=")["input_ids"]]
    tree = grow(policy, cfg, branching, prompts)
    roots = [t for t in tree if t.branch_step == 0]
    assert len(roots) == 6 and len(tree) > 12
    by_seed = {t.seed: t for t in tree}
    with torch.no_grad():
        replayed = replay(policy, tree, cfg)
    for traj, tokens, selection in zip(tree, replayed.token_logp, replayed.selection_logp):
        assert np.abs(tokens.numpy() - traj.event_logp[traj.commits]).max() < 1e-4
        assert np.abs(selection.numpy() - traj.selection_logp).max() < 1e-4
        if traj.branch_step == 0:
            continue
        parent = by_seed[int(traj.branch_seeds[-1])]
        s = traj.branch_step
        upto = parent.step_bounds()[s]
        # the shared prefix: the parent's events with the same log-probs, then the parent's canvas
        for name in ("event_step", "event_position", "event_token", "event_logp", "event_selection_logp"):
            np.testing.assert_array_equal(getattr(traj, name)[:upto], getattr(parent, name)[:upto])
        np.testing.assert_array_equal(traj.state_at(s), parent.state_at(s))
        assert (traj.owners()[:s] == parent.owners()[:s]).all() and (traj.owners()[s:] == traj.seed).all()
        assert traj.prompt_ids == parent.prompt_ids and traj.policy_version == parent.policy_version


def test_the_same_seeds_grow_the_same_tree_and_a_budget_bounds_it(tiny_model, tiny_tokenizer):
    policy = make_policy(tiny_model, tiny_tokenizer)
    cfg = DecodingConfig(gen_length=12, steps=6, temperature=1.0)
    prompts = [tiny_tokenizer("12+3=")["input_ids"]]
    wide = BranchingConfig(enabled=True, branches=3, at=[0.5], budget=1000)
    a, b = grow(policy, cfg, wide, prompts), grow(policy, cfg, wide, prompts)
    assert [t.seed for t in a] == [t.seed for t in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.event_token, y.event_token)
        np.testing.assert_array_equal(x.event_logp, y.event_logp)
    # 3 roots x 2 continuations of 3 steps each = 18 extra forwards; a budget of 10 allows 3 of them
    narrow = grow(policy, cfg, BranchingConfig(enabled=True, branches=3, at=[0.5], budget=10), prompts)
    assert len(a) == 3 + 6 and len(narrow) == 3 + 3
    assert len({t.sample_index for t in a}) == len(a)


def test_entropy_rule_branches_at_the_highest_entropy_steps():
    traj = hand_path(seed=1, steps=5)
    traj.event_entropy = np.array([9.0, 0.1, 3.0, 3.0, 0.5, 0.5, 2.0, 2.0, 0.2, 0.2], np.float32)
    cfg = BranchingConfig(enabled=True, rule="entropy", points=2)
    assert branch_points(traj, cfg) == [1, 3]  # step 0 (9.0) is never a branch point
    assert branch_points(traj, BranchingConfig(enabled=True, at=[0.2, 0.5])) == [1, 2]


def test_block_model_branches_through_the_exact_cache_and_replays():
    policy = fixture_policy("sdar", 4)
    cfg = DecodingConfig(gen_length=12, temperature=1.0, cache="block", block_length=4)
    prompts = [[5, 6, 7], [8, 9]]
    tree = grow(policy, cfg, BranchingConfig(enabled=True, branches=2, at=[0.4, 0.7], budget=1000), prompts, group=2)
    assert any(t.branch_step for t in tree)
    with torch.no_grad():
        replayed = replay(policy, tree, DecodingConfig(gen_length=12, temperature=1.0, block_length=4), packed=False)
    for traj, tokens in zip(tree, replayed.token_logp):
        assert np.abs(tokens.numpy() - traj.event_logp[traj.commits]).max() < 1e-4


# --- the estimator, on a hand-made tree ---------------------------------------------------------------

def hand_path(seed, steps=4, lineage=()):
    """A 2-commits-per-step path of `steps` steps; `lineage` = ((ancestor seed, until step), ...)."""
    n = 2 * steps
    return Trajectory(prompt_ids=[1], gen_length=n, block_length=n, mask_id=0,
                      event_step=np.repeat(np.arange(steps), 2).astype(np.int32),
                      event_position=np.arange(n, dtype=np.int32), event_token=np.full(n, 5, np.int64),
                      event_logp=np.full(n, -1.0, np.float32), selection_logp=np.zeros(steps, np.float32),
                      final_tokens=np.full(n, 5, np.int64), forward_passes=steps, seed=seed,
                      branch_seeds=np.array([s for s, _ in lineage], np.int64),
                      branch_steps=np.array([u for _, u in lineage], np.int32))


def hand_tree():
    """Root paths A (seed 1) and B (seed 2), 4 steps each. A1 continues A's canvas from step 2;
    B1 and B2 continue B's from step 1. Rewards A 1, A1 0, B 0, B1 1, B2 1."""
    leaves = [hand_path(1), hand_path(11, lineage=((1, 2),)), hand_path(2), hand_path(21, lineage=((2, 1),)),
              hand_path(22, lineage=((2, 1),))]
    return leaves, [1.0, 0.0, 0.0, 1.0, 1.0]


def test_step_advantages_equal_the_closed_form_of_a_hand_made_tree():
    leaves, rewards = hand_tree()
    root, node_a, node_b = 3 / 5, 1 / 2, 2 / 3  # V = mean reward of the leaves below each node
    expected = [[node_a - root] * 2 + [1 - node_a] * 2,  # A: steps 0-1 lead to node A, steps 2-3 its own
                [node_a - root] * 2 + [0 - node_a] * 2,
                [node_b - root] + [0 - node_b] * 3,
                [node_b - root] + [1 - node_b] * 3,
                [node_b - root] + [1 - node_b] * 3]
    credit = tree_credit(leaves, rewards, normalize_std=False)
    for got, want in zip(credit.steps, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(credit.leaf.numpy(), np.array(rewards) - root, atol=1e-6)
    assert credit.segments == 2 + 2 + 2 + 2 + 2
    sigma = np.std(rewards)  # per tree, normalised by the leaves' reward std
    normed = tree_credit(leaves, rewards, normalize_std=True)
    for got, want in zip(normed.steps, expected):
        np.testing.assert_allclose(got, np.array(want) / (sigma + 1e-4), atol=1e-5)


def test_nested_branches_take_the_closed_form_too():
    """A (seed 1); A1 from A at step 1; A2 from A1 at step 3; A3 from A at step 3; B (seed 2). 5 steps."""
    leaves = [hand_path(1, 5), hand_path(11, 5, ((1, 1),)), hand_path(12, 5, ((1, 1), (11, 3))),
              hand_path(13, 5, ((1, 3),)), hand_path(2, 5)]
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0]
    root = 0.4  # all five
    a_at_1 = (1 + 0 + 1 + 0) / 4  # A, A1, A2, A3 share A's step 0
    a_at_3, a1_at_3 = (1 + 0) / 2, (0 + 1) / 2  # {A, A3} share A's steps 0-2; {A1, A2} share A1's
    expected = [[a_at_1 - root, a_at_3 - a_at_1, a_at_3 - a_at_1, 1 - a_at_3, 1 - a_at_3],
                [a_at_1 - root, a1_at_3 - a_at_1, a1_at_3 - a_at_1, 0 - a1_at_3, 0 - a1_at_3],
                [a_at_1 - root, a1_at_3 - a_at_1, a1_at_3 - a_at_1, 1 - a1_at_3, 1 - a1_at_3],
                [a_at_1 - root, a_at_3 - a_at_1, a_at_3 - a_at_1, 0 - a_at_3, 0 - a_at_3],
                [0 - root] * 5]
    credit = tree_credit(leaves, rewards, normalize_std=False)
    for got, want in zip(credit.steps, expected):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_without_branches_every_step_takes_the_grpo_advantage():
    paths, rewards = [hand_path(s) for s in (1, 2, 3, 4)], [1.0, 0.0, 0.0, 0.5]
    credit = tree_credit(paths, rewards, normalize_std=True)
    grpo = (np.array(rewards) - np.mean(rewards)) / (np.std(rewards) + 1e-4)
    for got, want in zip(credit.steps, grpo):
        np.testing.assert_allclose(got, want, atol=1e-5)


# --- autograd: each event's gradient scaled by its segment's advantage -------------------------------

def test_each_event_gradient_is_scaled_by_its_step_advantage(tiny_model, tiny_tokenizer):
    policy = make_policy(tiny_model, tiny_tokenizer)
    cfg = DecodingConfig(gen_length=8, steps=4, temperature=1.0)
    [traj] = sample_jobs(policy, cfg, make_jobs([tiny_tokenizer("1+2=")["input_ids"]], 1, 3), 0)
    objective = build_objective("trajectory")
    params = [p for p in tiny_model.parameters()]

    def gradient(step_adv):
        batch = StepBatch([traj], torch.tensor([0.7]), cfg, (), step_advantages=[np.asarray(step_adv, np.float32)])
        prep = objective.prepare(policy, batch, torch.Generator().manual_seed(0))
        units = objective.units(batch, prep)
        tiny_model.zero_grad()
        loss, _ = objective.loss(policy, batch, prep, [0], units)
        loss.backward()
        return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in params]), units

    # independently: −Σ_e A(step of e)·∇ log p(e) / units, from a fresh replay (ratio 1 at θ_old)
    def by_hand(step_adv, units):
        tiny_model.zero_grad()
        logp = replay(policy, [traj], cfg).token_logp[0]
        steps = traj.event_step[traj.commits]
        (-(torch.tensor(np.asarray(step_adv, np.float32)[steps]) * logp).sum() / units).backward()
        return torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in params])

    mixed = [1.5, 0.0, -2.0, 0.0][:traj.num_steps]
    got, units = gradient(mixed)
    assert torch.allclose(got, by_hand(mixed, units), atol=1e-6) and got.abs().sum() > 0
    zero, _ = gradient([0.0] * traj.num_steps)
    assert torch.equal(zero, torch.zeros_like(zero))  # zero segment advantage: exactly zero gradient
    only_one = [0.0] * traj.num_steps
    only_one[2] = -2.0
    part, _ = gradient(only_one)
    assert torch.allclose(part, by_hand(only_one, units), atol=1e-6)


# --- intermediate rewards and temporal consistency ---------------------------------------------------

def test_intermediate_rewards_set_egspo_and_mdpo_step_values():
    from reasoning.credit import intermediate_credit, right_then_lost

    paths, rewards = [hand_path(s) for s in (1, 2, 3)], [1.0, 0.0, 0.0]
    step_rewards = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, np.nan]])  # at steps 1 and 3
    credit = tree_credit(paths, rewards, normalize_std=False)
    intermediate_credit(credit, rewards, step_rewards, [1, 3], "egspo", 0.5, normalize_std=False)
    value = (np.array(rewards) + 0.5 * (np.array(rewards) - step_rewards[:, 0])) / 1.5
    np.testing.assert_allclose([c[1] for c in credit.steps], value - value.mean(), atol=1e-6)
    value3 = (np.array(rewards[:2]) + 0.5 * (np.array(rewards[:2]) - step_rewards[:2, 1])) / 1.5
    np.testing.assert_allclose([c[3] for c in credit.steps[:2]], value3 - value3.mean(), atol=1e-6)
    outcome = np.array(rewards) - np.mean(rewards)
    assert credit.steps[2][3] == pytest.approx(outcome[2]) and credit.steps[0][0] == pytest.approx(outcome[0])
    # MDPO adv-v4 at the first chosen step: (r_1 − 0) + 1 + mean(r_3, r_final), normalised over the group
    mdpo = tree_credit(paths, rewards, normalize_std=False)
    intermediate_credit(mdpo, rewards, step_rewards, [1, 3], "mdpo", 1.0, normalize_std=False)
    a = np.array([0 + 1 + (1 + 1) / 2, 1 + 1 + (0 + 0) / 2, 0 + 1 + 0])
    normed = (a - a.mean()) / (a.std() + 1e-4)
    np.testing.assert_allclose([c[1] for c in mdpo.steps], (outcome + normed) / 2, atol=1e-5)
    assert right_then_lost(rewards, step_rewards) == pytest.approx(1 / 3)  # answer 1 had it at step 1


def test_a_reward_can_read_the_trajectories_and_temporal_consistency_scores_them(tiny_model, tiny_tokenizer):
    from rewards import RewardRunner, RewardSpec
    from rewards.registry import RewardsConfig
    from rewards.verifiers import temporal_self_consistency

    policy = make_policy(tiny_model, tiny_tokenizer)
    cfg = DecodingConfig(gen_length=8, steps=4, temperature=1.0, record_predictions=True)
    trajectories = sample_jobs(policy, cfg, make_jobs([tiny_tokenizer("1+2=")["input_ids"]], 3, 5), 0)
    assert all(t.step_prediction.shape == (4, 8) for t in trajectories)
    for t in trajectories:  # ŷ_t keeps the committed tokens of the canvas it was predicted from
        for s in range(t.num_steps):
            canvas = t.state_at(s)
            committed = canvas != t.mask_id
            stop = np.isin(t.step_prediction[s], policy.ids.stop).cumsum() - np.isin(t.step_prediction[s], policy.ids.stop)
            assert (t.step_prediction[s][committed & (stop == 0)] == canvas[committed & (stop == 0)]).all()
    spec = RewardSpec(fn=os.path.join(os.path.dirname(__file__), "reward_fns.py") + ":steps_seen")
    with RewardRunner(RewardsConfig(functions=[spec, RewardSpec(name="temporal_consistency")])) as runner:
        scored = runner(["p"] * 3, ["a"] * 3, None, trajectories=trajectories)
    assert scored.per_function["steps_seen"] == [float(t.num_steps) for t in trajectories]
    assert scored.per_function["temporal_consistency"] == pytest.approx(
        [temporal_self_consistency(t.step_prediction) for t in trajectories])
    # the closed form, written here: 4 predictions in clusters of sizes 2, 1, 1
    rows = np.array([[1, 2], [1, 2], [3, 4], [5, 6]])
    p = np.array([0.5, 0.25, 0.25])
    assert temporal_self_consistency(rows) == pytest.approx(1 + (p * np.log(p)).sum() / math.log(4))
    assert temporal_self_consistency(np.array([[1, 2]] * 4)) == pytest.approx(1.0)


# --- bad input: one line, exit 2, nothing written -----------------------------------------------------

BAD = [
    (["rollout.branching.enabled=true", "rollout.branching.branches=1"], "branches"),
    (["rollout.branching.enabled=true", "rollout.branching.at=[1.5]"], "rollout.branching"),
    (["rollout.branching.enabled=true", "rollout.branching.at=[0]"], "strictly between 0 and 1"),
    (["rollout.branching.enabled=true", "rollout.branching.budget=0"], "budget"),
    (["rewards.intermediate.at=[2, 50]"], "rewards.intermediate.at"),
    (["rewards=[{name: sudoku4}, {name: temporal_consistency}]"], "rollout.record_predictions"),
    (["rollout.branching.enabled=true", "trainer.leave_one_out=true"], "trainer.leave_one_out"),
    (["rollout.branching.enabled=true", "rollout.cache=prefix"], "rollout.branching"),
]


@pytest.mark.parametrize("overrides,expected", BAD, ids=[b[1] + str(i) for i, b in enumerate(BAD)])
def test_bad_credit_settings_are_one_clear_line_and_write_nothing(overrides, expected, tmp_path, capsys):
    runs = tmp_path / "runs"
    config = write(tmp_path / "run.yaml", "name: run\n")
    before = set(os.listdir(tmp_path))
    assert main(["train", config, *FAST, *overrides, f"output_dir={runs}"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dlmrl ")]
    assert len(lines) == 1 and expected.lower() in lines[0].lower(), err[-2000:]
    assert "Traceback" not in err
    assert not runs.exists() and set(os.listdir(tmp_path)) == before


def test_show_marks_branch_points_and_draws_a_prompts_tree(tiny_model, tiny_tokenizer, tmp_path):
    from reasoning.show import show_trajectories
    from rollouts import save_jsonl

    policy = make_policy(tiny_model, tiny_tokenizer)
    cfg = DecodingConfig(gen_length=8, steps=4, temperature=1.0)
    tree = grow(policy, cfg, BranchingConfig(enabled=True, branches=2, at=[0.5], budget=100),
                [tiny_tokenizer("1+2=")["input_ids"]], group=2)
    path = str(tmp_path / "step_000001.jsonl")
    save_jsonl(tree, path)
    branch = next(i for i, t in enumerate(tree) if t.branch_step)
    written = show_trajectories(path, tiny_tokenizer, branch)
    assert [os.path.basename(w) for w in written] == [f"step_000001_{branch}.png", f"step_000001_{branch}.html",
                                                      f"step_000001_{branch}_tree.png"]
    assert all(os.path.getsize(w) > 0 for w in written)
    assert "border-top:3px dashed magenta" in open(written[1]).read()


def test_branching_with_hints_on_ray_workers_asynchronously(tmp_path):
    """Trees grown by the Ray workers that sampled their roots, in the asynchronous producer, with
    hints on: every tree has one policy version, and the step-level metrics are logged."""
    pytest.importorskip("ray")
    from helpers import config, train_steps

    from reasoning.rl import run_rl
    from rollouts import load_jsonl

    cfg = config(tmp_path, "ray.enabled=true", "ray.num_workers=2", "trainer.steps=2", "trainer.save_rollouts_every=1",
                 "rollout.async.enabled=true", "rollout.branching.enabled=true", "rollout.hints.enabled=true",
                 "rollout.hints.fail_reward=0.2")
    run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2]
    assert all(m["branch/extra_forwards"] > 0 and m["branch/trees"] == 2 for m in steps)
    assert all(0 <= m["credit/step_informative_fraction"] <= 1 for m in steps)
    for step in (1, 2):
        saved = load_jsonl(os.path.join(cfg.run_dir, "rollouts", f"step_{step:06d}.jsonl"))
        for prompt in {t.prompt_index for t in saved}:
            tree = [t for t in saved if t.prompt_index == prompt and not t.hinted]
            assert len({t.policy_version for t in tree}) == 1 and any(t.branch_step for t in tree)


def test_recorded_entropy_is_the_step_distributions_at_each_commit(tiny_model, tiny_tokenizer):
    """Checked against the model's own log-probs at the state each token was committed from."""
    from rollouts.decoding import left_pad

    policy = make_policy(tiny_model, tiny_tokenizer)
    cfg = DecodingConfig(gen_length=8, steps=4, temperature=1.0, remask="running_confidence", remask_threshold=0.3)
    [traj] = sample_jobs(policy, cfg, make_jobs([tiny_tokenizer("1+2=")["input_ids"]], 1, 3), 0)
    ids, mask = left_pad([traj.prompt_ids], policy.ids.pad)
    assert np.isnan(traj.event_entropy[~traj.commits]).all()
    for e in np.flatnonzero(traj.commits):
        state = torch.as_tensor(traj.state_at(int(traj.event_step[e])))[None]
        with torch.no_grad():
            logp = policy.step_log_probs(ids, mask, state, 1.0)[0, traj.event_position[e]]
        entropy = float(-(logp.exp() * logp).nan_to_num().sum())
        assert traj.event_entropy[e] == pytest.approx(entropy, abs=1e-4)


def test_replay_forwards_a_state_shared_by_several_leaves_once(tiny_model, tiny_tokenizer):
    policy = make_policy(tiny_model, tiny_tokenizer)
    cfg = DecodingConfig(gen_length=12, steps=6, temperature=1.0, selection_temperature=0.5)
    tree = grow(policy, cfg, BranchingConfig(enabled=True, branches=3, at=[0.5], budget=1000),
                [tiny_tokenizer("1+2=")["input_ids"], tiny_tokenizer("4+5=")["input_ids"]])
    with torch.no_grad():
        together = replay(policy, tree, cfg, micro_batch=1)
        alone = [replay(policy, [t], cfg, micro_batch=1) for t in tree]
    states = sum(t.num_steps for t in tree)
    canvases = {(tuple(t.prompt_ids), s, t.state_at(s).tobytes()) for t in tree for s in range(t.num_steps)}
    assert len(canvases) <= together.forward_passes < states
    for i, one in enumerate(alone):
        assert one.forward_passes == tree[i].num_steps
        torch.testing.assert_close(together.token_logp[i], one.token_logp[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.selection_logp[i], one.selection_logp[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(together.event_selection_logp[i], one.event_selection_logp[0], atol=1e-5, rtol=0)
