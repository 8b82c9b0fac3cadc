"""GDPO, ESPO and BGPO against their reference equations, recomputed here from raw logits (never
through the objective's own code); their paper defaults against the reference values. The direction
and micro-batch tests of tests/test_estimators.py cover them too (they run over every registered
objective)."""

import math

import pytest
import torch

from reasoning.objectives import build_objective, paper_defaults
from reasoning.objectives.elbo import GAUSS_LEGENDRE, content_seed
from test_estimators import EOS, prepared, raw_token_log_probs


def answer_tokens(traj) -> int:
    final = list(traj.final_tokens)
    return final.index(EOS) + 1 if EOS in final else len(final)


def test_gauss_legendre_nodes_are_the_recipes():
    nodes, weights = GAUSS_LEGENDRE[3]
    assert nodes == pytest.approx([0.1127, 0.5, 0.8873], abs=1e-4)
    assert weights == pytest.approx([5 / 18, 8 / 18, 5 / 18])


def test_gdpo_is_a_gauss_legendre_elbo_over_the_answer_length():
    policy, batch, objective, prep = prepared("gdpo", n=4, seed=3)
    nodes, weights = [0.5 - 0.5 * math.sqrt(0.6), 0.5, 0.5 + 0.5 * math.sqrt(0.6)], [5 / 18, 8 / 18, 5 / 18]
    with torch.no_grad():
        units = objective.unit_log_probs(policy, batch, prep, [0, 1, 2, 3], 0)[0]
    for i, traj in enumerate(batch.trajectories):
        size = answer_tokens(traj)
        elbo = 0.0
        for t, w, mask in zip(nodes, weights, prep.draws.masks[i]):
            assert int(mask.sum()) == min(max(math.floor(t * size), 1), size)  # exactly ⌊t|y|⌋ masked
            assert not mask[size:].any()  # only answer tokens
            lp = raw_token_log_probs(policy, traj.prompt_ids, [1 if m else tok for m, tok in zip(mask, traj.final_tokens)],
                                     traj.final_tokens)
            elbo += w / t * float(lp[mask].sum())
        assert float(units[i]) == pytest.approx(elbo / size, abs=1e-5)
    # the masks follow the row's content, not the update's generator (old, ref and θ share them)
    _, _, _, again = prepared("gdpo", n=4, seed=99)
    assert all(torch.equal(a, b) for x, y in zip(prep.draws.masks, again.draws.masks) for a, b in zip(x, y))
    traj = batch.trajectories[0]
    ids = list(traj.prompt_ids) + list(traj.final_tokens)
    assert content_seed(traj.prompt_ids, traj.final_tokens) == sum(t * k for k, t in enumerate(ids)) % (2 ** 31 - 1)


def test_espo_is_a_coupled_elbo_with_counts_stratified_over_the_batch():
    policy, batch, objective, prep = prepared("espo", n=8, seed=5, espo_draws=2)
    L, b = 4, 4  # two prompts, four answers each: the counts are stratified within each prompt's group
    with torch.no_grad():
        units = objective.unit_log_probs(policy, batch, prep, list(range(8)), 0)[0]
    for d in range(2):
        for prompt in (0, 1):
            members = sorted((i for i, t in enumerate(batch.trajectories) if t.prompt_index == prompt),
                             key=lambda i: batch.trajectories[i].sample_index)
            counts = [int(prep.draws.masks[0][d][i].sum()) for i in members]
            assert any(counts == [round(k + r * (L + 1) / b) % (L + 1) for r in range(b)] for k in range(L + 1))
    for i, traj in enumerate(batch.trajectories):
        values = []
        for d in range(2):
            mask = prep.draws.masks[0][d][i]
            p = int(mask.sum()) / (L + 1)
            on = raw_token_log_probs(policy, traj.prompt_ids, [1 if m else t for m, t in zip(mask, traj.final_tokens)],
                                     traj.final_tokens)
            off = raw_token_log_probs(policy, traj.prompt_ids, [t if m else 1 for m, t in zip(mask, traj.final_tokens)],
                                      traj.final_tokens)
            value = (float(on[mask].sum()) / p if mask.any() else 0.0)
            value += float(off[~mask].sum()) / (L / (L + 1) - p) if (~mask).any() else 0.0
            values.append(0.5 * value)  # over all L positions, pads included
        assert float(units[i]) == pytest.approx(sum(values) / 2 / L, abs=1e-5)


def test_espo_kl_is_k2_on_the_raw_elbo_gap():
    objective = build_objective("espo")
    policy, batch, _, _ = prepared("espo", n=4, seed=5)
    ref, logp = torch.tensor([-0.5, -0.2]), torch.tensor([-0.4, -0.6])
    got = objective.kl_units(ref, logp, batch, [0, 1])
    raw_gap = (logp - ref) * 4  # ELBO = unit × L
    assert got.tolist() == pytest.approx((0.5 * raw_gap ** 2 / 4).tolist())


def test_bgpo_counts_are_stratified_and_its_ratio_is_linear_only_for_nonnegative_advantages():
    policy, batch, objective, prep = prepared("bgpo", n=4, seed=6, advantages=[1.0, -1.0, 0.5, -2.0], bgpo_draws=4)
    n_t = 4
    for i, traj in enumerate(batch.trajectories):
        size = answer_tokens(traj)
        counts = [int(m.sum()) for m in prep.draws.masks[i]]
        assert any(counts == [((round(k + j * size / n_t) - 1) % size) + 1 for j in range(n_t)] for k in range(1, size + 1))
    with torch.no_grad():
        values = objective.unit_log_probs(policy, batch, prep, [0, 1, 2, 3], 0)[0]
    for i, traj in enumerate(batch.trajectories):  # l_j = Σ_masked ℓ / p_j / L
        size = answer_tokens(traj)
        for j, mask in enumerate(prep.draws.masks[i]):
            lp = raw_token_log_probs(policy, traj.prompt_ids, [1 if m else t for m, t in zip(mask, traj.final_tokens)],
                                     traj.final_tokens)
            assert float(values[i][j]) == pytest.approx(float(lp[mask].sum()) / (int(mask.sum()) / size) / 4, abs=1e-5)
    # the bound: d = +0.1 everywhere but sample 3, whose d = +2 meets the dual clip
    gaps = [0.1, 0.1, 0.1, 2.0]
    prep.old = {0: [values[i] - gaps[i] for i in range(4)]}
    with torch.no_grad():
        loss, _ = objective.loss(policy, batch, prep, [0, 1, 2, 3], objective.units(batch, prep))
    expected = 0.0
    for adv, d in zip([1.0, -1.0, 0.5, -2.0], gaps):
        ratio = 1 + d if adv >= 0 else math.exp(d)
        surrogate = min(ratio * adv, min(max(ratio, 0.8), 1.2) * adv)
        if adv < 0:
            surrogate = max(surrogate, 3.0 * adv)
        expected += -surrogate * n_t
    assert float(loss) == pytest.approx(expected / (4 * n_t), abs=1e-5)


def test_the_2026_objectives_take_their_references_defaults():
    gdpo, espo, bgpo = paper_defaults("gdpo"), paper_defaults("espo"), paper_defaults("bgpo")
    # GDPO (NeMo-RL port): clip (0.5, 1.5), β 0, one update per rollout batch, A = r − mean, gauss-3
    assert (gdpo["clip_eps_low"], gdpo["clip_eps_high"], gdpo["kl_coef"], gdpo["inner_steps"]) == (0.5, 0.5, 0.0, 1)
    assert (gdpo["normalize_std"], gdpo["leave_one_out"], build_objective("gdpo").s.gdpo_nodes) == (False, False, 3)
    # ESPO (recipes/train.yaml): ε 0.2, β 1e-3, μ 8, num_mc 2, leave-one-out without std
    assert (espo["clip_eps_low"], espo["kl_coef"], espo["inner_steps"], build_objective("espo").s.espo_draws) == \
        (0.2, 1e-3, 8, 2)
    assert (espo["normalize_std"], espo["leave_one_out"]) == (False, True)
    # BGPO (paper §4.1 / DARE script): ε 0.2, dual clip 3, n_t 16, on-policy, A = (r − mean)/std, no KL
    settings = build_objective("bgpo").s
    assert (bgpo["clip_eps_low"], bgpo["kl_coef"], bgpo["inner_steps"], bgpo["normalize_std"]) == (0.2, 0.0, 1, True)
    assert (settings.bgpo_draws, settings.bgpo_dual_clip) == (16, 3.0)


def test_mean_field_normalises_as_d1_over_every_token_of_the_batch():
    """d1's DiffuGRPOTrainer: the loss is the mean over every answer token of the batch, the groups
    without reward variance included. At the first inner step ρ = 1, so its value is
    −Σ_{trained tokens} A / (tokens of all answers). Counted here from the answers' tokens."""
    from reasoning.objectives import StepBatch
    from test_estimators import batch_for, tiny_policy
    from rollouts import DecodingConfig

    policy = tiny_policy()
    cfg = DecodingConfig(gen_length=4, temperature=1.0, confidence="max_prob")
    full = batch_for(policy, cfg, n=8)
    trained, dropped = full.trajectories[:4], full.trajectories[4:]  # the second prompt's group: no variance
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for normalize, denominator in (("batch", trained + dropped), ("informative", trained)):
        batch = StepBatch(trained, advantages, cfg, (EOS,), uninformative=list(dropped))
        objective = build_objective("mean_field", normalize=normalize)
        prep = objective.prepare(policy, batch, torch.Generator().manual_seed(0), inner_steps=1)
        with torch.no_grad():
            loss, _ = objective.loss(policy, batch, prep, [0, 1, 2, 3], objective.units(batch, prep))
        tokens = [answer_tokens(t) for t in trained]
        expected = -sum(a * n for a, n in zip(advantages.tolist(), tokens)) / sum(answer_tokens(t) for t in denominator)
        assert float(loss) == pytest.approx(expected, abs=1e-6), normalize
    assert build_objective("mean_field").s.normalize == "batch"  # d1's rule is the paper default


def test_mean_field_takes_its_optimizer_steps_when_no_group_is_informative():
    """d1 steps the optimizer even on a batch without signal: after an informative step, Adam's
    momentum moves the weights on a step whose groups all had equal rewards. With
    `normalize: informative` (and for every other objective) that update is skipped."""
    from reasoning.config import deepspeed_config_path
    from reasoning.engine import build_engine
    from reasoning.objectives import StepBatch
    from reasoning.update import Learner, update
    from rollouts import DecodingConfig
    from test_estimators import batch_for, tiny_policy

    cfg = DecodingConfig(gen_length=4, temperature=1.0, confidence="max_prob")
    moved = {}
    for normalize in ("batch", "informative"):
        policy = tiny_policy()
        engine, optimizer = build_engine(policy.model, deepspeed_config_path("zero0", "trainer.deepspeed"), lr=1e-2)
        policy.model = engine.module
        objective = build_objective("mean_field", normalize=normalize, kl_coef=0.0)
        learner = Learner(engine, optimizer, policy, objective, 1, 1, False, 1)
        informative = batch_for(policy, cfg, n=8)
        update(learner, informative, torch.Generator().manual_seed(0))
        before = [p.detach().clone() for p in engine.module.parameters()]
        empty = StepBatch([], torch.zeros(0), cfg, (EOS,), uninformative=informative.trajectories)
        result = update(learner, empty, torch.Generator().manual_seed(1))
        moved[normalize] = max(float((p - b).abs().max()) for p, b in zip(engine.module.parameters(), before))
        assert result.updated == (normalize == "batch")
    assert moved["batch"] > 1e-4 and moved["informative"] == 0.0
