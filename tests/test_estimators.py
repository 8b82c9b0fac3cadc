"""Estimators checked against closed forms and against the direction of learning — never against the
code under test. A flipped sign anywhere in an objective fails `test_one_update_moves_expected_reward`."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from reasoning.advantages import group_advantages
from reasoning.config import load_config
from reasoning.objectives import (OBJECTIVES, HintTokens, Objective, ObjectiveSettings, Prepared, StepBatch,
                                  build_objective, k3, paper_defaults)
from reasoning.schema import ConfigError
from rollouts import DecodingConfig, DiffusionPolicy, TokenIds, replay, sample

MASK, EOS, GOOD = 1, 2, 3
PROMPT = [4, 5]


def tiny_policy(seed=8, scale=4.0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                         tie_word_embeddings=False, pad_token_id=EOS, eos_token_id=EOS, bos_token_id=None)
    config.is_causal = False
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return DiffusionPolicy(model, TokenIds(mask=MASK, pad=EOS, eos=EOS))


# --- units: advantages, clip, KL -------------------------------------------------------------------

def test_group_advantages_closed_forms():
    adv = group_advantages([1, 0, 0, 1, 0.5, 0.5, 0.5, 0.5], 4, normalize_std=True, eps=1e-4)
    assert adv.values[:4].tolist() == pytest.approx([x / (0.5 + 1e-4) for x in (0.5, -0.5, -0.5, 0.5)])
    assert adv.values[4:].tolist() == [0, 0, 0, 0] and adv.keep.tolist() == [True] * 4 + [False] * 4
    assert adv.frac_zero_std == 0.5
    loo = group_advantages([1, 0, 0, 0], 4, normalize_std=False, leave_one_out=True)
    assert loo.values.tolist() == pytest.approx([1, -1 / 3, -1 / 3, -1 / 3])  # r_i − mean of the other three
    plain = group_advantages([3, 1], 2, normalize_std=False)
    assert plain.values.tolist() == [1, -1]


class FixedUnits(Objective):
    """Units whose log-probs are the given leaf tensors (to test the shared PPO/KL code alone)."""

    def __init__(self, settings, logps):
        super().__init__(settings)
        self.logps = logps

    def unit_log_probs(self, policy, batch, prep, indices, inner):
        return [self.logps[i] for i in indices], [torch.zeros_like(self.logps[i]) for i in indices]


def test_ppo_clip_passes_no_gradient_past_the_clip():
    eps = 0.2
    logp = torch.log(torch.tensor([1.5, 1.1, 0.5, 0.9, 1.5])).requires_grad_()  # ratios vs old = 0
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0])
    objective = FixedUnits(ObjectiveSettings(clip_eps_low=eps, clip_eps_high=eps), [logp[i:i + 1] for i in range(5)])
    prep = Prepared(hints=HintTokens(), draws=None, old={0: [torch.zeros(1)] * 5})
    batch = StepBatch([None] * 5, adv, DecodingConfig())
    loss, stats = objective.loss(None, batch, prep, list(range(5)), total_units=5)
    loss.backward()
    ratio = logp.detach().exp()
    # d/dlogp of −min(ρA, clip(ρ)A)/N: 0 where the clipped side is taken, else −ρA/N
    expected = torch.tensor([0.0, -ratio[1] * 1 / 5, 0.0, ratio[3] / 5, ratio[4] / 5])
    assert logp.grad.tolist() == pytest.approx(expected.tolist())
    assert float(loss) == pytest.approx(-(1.2 + 1.1 - 0.8 - 0.9 - 1.5) / 5)
    assert stats.clip_high == 1 and stats.clip_low == 1


def test_k3_value_and_gradient():
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0, -0.5])
    value = k3(ref, logp)
    d = ref - logp.detach()
    assert value.tolist() == pytest.approx((torch.exp(d) - d - 1).tolist())
    value.sum().backward()
    assert logp.grad.tolist() == pytest.approx((1 - torch.exp(d)).tolist())  # d/dlogp [e^{r−l} − (r−l) − 1]
    assert (value >= 0).all() and value[2] == 0


# --- direction: one update raises the expected reward, the negated one lowers it --------------------

def expected_reward(policy) -> float:
    """P(answer = GOOD) for a one-token answer: softmax(raw logits) at the masked canvas, [MASK] excluded."""
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([PROMPT + [MASK]])).logits[0, -1].double()
    logits[MASK] = -math.inf
    return float(torch.softmax(logits, -1)[GOOD])


def one_update(name, sign, cfg, trajectories, rewards):
    policy = tiny_policy()
    defaults = paper_defaults(name)
    adv = group_advantages(rewards, len(rewards), defaults["normalize_std"], defaults["leave_one_out"]).values
    batch = StepBatch(trajectories, sign * adv, cfg, (EOS,))
    objective = build_objective(name, clip_eps_low=defaults["clip_eps_low"], clip_eps_high=defaults["clip_eps_high"],
                                spg_block=1)
    prep = objective.prepare(policy, batch, torch.Generator().manual_seed(0), inner_steps=1)
    loss, _ = objective.loss(policy, batch, prep, list(range(len(trajectories))), objective.units(batch, prep), 0)
    loss.backward()
    with torch.no_grad():
        for p in policy.model.parameters():
            p -= 0.05 * p.grad
    return expected_reward(policy)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_one_update_moves_expected_reward(name):
    cfg = DecodingConfig(gen_length=1, temperature=1.0, confidence="max_prob")
    policy = tiny_policy()
    trajectories = sample(policy, [PROMPT] * 8, cfg, seeds=list(range(8)))
    for i, t in enumerate(trajectories):
        t.sample_index = i
    rewards = [float(t.final_tokens[0] == GOOD) for t in trajectories]
    assert 0 < sum(rewards) < len(rewards)  # both kinds of answer in the group
    before = expected_reward(policy)
    up = one_update(name, 1.0, cfg, trajectories, rewards)
    down = one_update(name, -1.0, cfg, trajectories, rewards)
    assert up > before + 1e-5 and down < before - 1e-5, (name, before, up, down)


# --- normalisation: splitting a batch over micro-batches changes nothing ----------------------------

def batch_for(policy, cfg, n=8):
    trajectories = sample(policy, [PROMPT, [5, 4, 3]] * (n // 2), cfg, seeds=list(range(n)))
    for i, t in enumerate(trajectories):
        t.prompt_index, t.sample_index = i % 2, i // 2
    trajectories.sort(key=lambda t: (t.prompt_index, t.sample_index))
    rewards = [float((t.final_tokens == GOOD).sum()) + 0.1 * i for i, t in enumerate(trajectories)]
    adv = group_advantages(rewards, n // 2, normalize_std=True).values
    return StepBatch(trajectories, adv, cfg, (EOS,))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_micro_batch_split_gives_the_same_gradient(name):
    cfg = DecodingConfig(gen_length=4, temperature=1.0, confidence="max_prob", selection_temperature=0.5)
    gradients = []
    for parts in (1, 2, 4):
        policy = tiny_policy()
        batch = batch_for(policy, cfg)
        objective = build_objective(name, spg_block=2)
        prep = objective.prepare(policy, batch, torch.Generator().manual_seed(7), inner_steps=2)
        units = objective.units(batch, prep)
        for chunk in np.array_split(np.arange(len(batch.trajectories)), parts):
            loss, _ = objective.loss(policy, batch, prep, chunk.tolist(), units, inner=1)
            loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in policy.model.parameters()]))
    assert gradients[0].abs().max() > 0
    for other in gradients[1:]:
        assert torch.allclose(gradients[0], other, atol=1e-6, rtol=1e-5)


# --- the estimators' formulas, recomputed here from raw logits ---------------------------------------

def raw_token_log_probs(policy, prompt, canvas, final):
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([list(prompt) + list(canvas)])).logits[0, len(prompt):].double()
    logits[:, MASK] = -math.inf
    return logits.log_softmax(-1).gather(-1, torch.as_tensor(final).long().unsqueeze(-1)).squeeze(-1)


def prepared(name, n, seed, advantages=None, **settings):
    """(policy, batch, objective, prepared) with the objective's randomness drawn for one inner step."""
    policy = tiny_policy()
    batch = batch_for(policy, DecodingConfig(gen_length=4, temperature=1.0, confidence="max_prob"), n=n)
    if advantages is not None:
        batch.advantages = torch.tensor(advantages)
    objective = build_objective(name, **settings)
    prep = objective.prepare(policy, batch, torch.Generator().manual_seed(seed), inner_steps=1)
    return policy, batch, objective, prep


def test_coupled_is_diffucoder_full_mask_plus_complementary_pair():
    policy, batch, objective, prep = prepared("coupled", n=4, seed=1)
    t = prep.draws.t[0]
    assert 0.2 <= t <= 0.8
    with torch.no_grad():
        got = objective.unit_log_probs(policy, batch, prep, [0], 0)[0][0]
    traj = batch.trajectories[0]
    final = traj.final_tokens
    in_a = prep.draws.u[0][0] < t
    full = raw_token_log_probs(policy, traj.prompt_ids, [MASK] * 4, final)
    on_a = raw_token_log_probs(policy, traj.prompt_ids, np.where(in_a, MASK, final), final)
    on_b = raw_token_log_probs(policy, traj.prompt_ids, np.where(~in_a.numpy(), MASK, final), final)
    expected = 0.5 * (full + torch.where(in_a, on_a / t, on_b / (1 - t)))
    stop = next((i for i, tok in enumerate(final) if tok == EOS), 3)
    assert got.double().tolist() == pytest.approx(expected[:stop + 1].tolist(), abs=1e-5)


def test_wd1_weights_are_group_softmaxes_and_the_score_a_sum():
    policy, batch, objective, prep = prepared("wd1", n=8, seed=2)
    first = batch.advantages[:4]
    weights = prep.draws.weights
    assert weights[:4].tolist() == pytest.approx((first.softmax(0) - (-first).softmax(0)).tolist())
    assert objective.units(batch, prep) == 2  # a unit is a group
    loss, _ = objective.loss(policy, batch, prep, list(range(8)), 2, 0)
    logps, _ = objective.unit_log_probs(policy, batch, prep, list(range(8)), 0)
    expected = -sum(float(weights[i]) * float(logps[i].sum()) for i in range(8)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_spg_upper_bound_for_negative_advantages():
    """S⁻ = (1/β)·mean_{k: P_k>0} log P_k, P_k = mean_j 1(k∈M_j)·p_k^β / t̂_j — recomputed here."""
    policy, batch, objective, prep = prepared("spg", n=4, seed=3, advantages=[-1.0, 1.0, -0.5, 0.5],
                                              spg_mode="eubo", spg_beta=1.5, spg_block=2)
    with torch.no_grad():
        canvases, _ = objective.canvas_log_probs(policy, batch, prep.draws, [0], 0)
        got = objective.sequence_score(batch, prep.draws, 0, 0, canvases[0])
    draws = [d[0] for d in prep.draws[0]]
    traj = batch.trajectories[0]
    beta, n_valid = 1.5, draws[0].n_valid
    p_k = torch.zeros(4, dtype=torch.float64)
    for drop, masked, scored in ((d.drop, d.masked, d.scored) for d in draws):
        prompt = np.where(drop.numpy(), MASK, traj.prompt_ids)
        lp = raw_token_log_probs(policy, prompt, np.where(masked.numpy(), MASK, traj.final_tokens), traj.final_tokens)
        t_hat = scored.sum().item() / n_valid
        p_k += torch.where(scored, torch.exp(beta * lp) / t_hat, torch.zeros_like(lp)) / len(draws)
    expected = torch.log(p_k[p_k > 0]).mean() / beta
    assert float(got) == pytest.approx(float(expected), rel=1e-4)


# --- defects fixed -----------------------------------------------------------------------------------

def test_merged_replay_never_scores_a_visible_position():
    """merge_steps 3 with revisions: a position committed, re-masked and committed again inside one
    window must be masked in the canvas the window is scored from."""
    cfg = DecodingConfig(gen_length=6, temperature=1.0, confidence="max_prob", remask="running_confidence",
                         remask_threshold=0.45, remask_budget=4)
    policy = tiny_policy(scale=2.0)
    trajectories = sample(policy, [PROMPT] * 32, cfg, seeds=list(range(32)))
    seen = []
    original = policy.step_log_probs
    policy.step_log_probs = lambda p, m, answer, *a: seen.append(answer.clone()) or original(p, m, answer, *a)
    replay(policy, trajectories, cfg, merge_steps=3, micro_batch=1)
    windows, recommitted_visible = 0, 0
    for traj in trajectories:
        bounds = traj.step_bounds()
        for first in range(0, traj.num_steps, 3):
            canvas = seen[windows][0].tolist()
            windows += 1
            events = slice(bounds[first], bounds[min(first + 3, traj.num_steps)])
            committed = traj.event_position[events][traj.event_token[events] != MASK]
            assert all(canvas[p] == MASK for p in committed)
            recommitted_visible += any(traj.state_at(first)[p] != MASK for p in committed)
    assert windows == len(seen) and recommitted_visible > 0  # the case the fix is about occurred


def test_rl_rollouts_at_temperature_zero_are_refused_unless_selection_is_learned():
    from reasoning.preflight import check_rollout_temperature

    with pytest.raises(ConfigError, match="rollout.temperature"):
        check_rollout_temperature("trajectory", DecodingConfig(temperature=0.0))
    with pytest.raises(ConfigError, match="rollout.temperature"):
        check_rollout_temperature("mean_field", DecodingConfig(temperature=0.0, selection_temperature=0.5))
    check_rollout_temperature("trajectory", DecodingConfig(temperature=0.0, selection_temperature=0.5))
    # then only the position choice is trained: the units are the pick factors alone
    cfg = DecodingConfig(gen_length=4, temperature=0.0, confidence="max_prob", selection_temperature=0.5)
    policy = tiny_policy()
    batch = batch_for(policy, cfg, n=4)
    objective = build_objective("trajectory")
    logps, _ = objective.unit_log_probs(policy, batch, Prepared(HintTokens(), None, {}), [0], 0)
    traj = batch.trajectories[0]
    assert logps[0].detach().tolist() == pytest.approx(traj.event_selection_logp[traj.commits].tolist(), abs=1e-5)
    assert logps[0].requires_grad and (logps[0].detach() < 0).any()


def test_kl_without_a_reference_is_refused():
    with pytest.raises(ConfigError, match="trainer.objective.kl_coef"):
        load_config(None, ["trainer.objective.kl_coef=0.1"])  # full fine-tune: no adapter to disable, no frozen copy
    assert load_config(None, ["trainer.objective=mean_field"]).objective_settings().kl_coef == 0.0  # d1's β needs LoRA


def test_objectives_take_their_papers_defaults():
    cfg = load_config(None, ["trainer.objective=mean_field", "model.lora.enabled=true"])
    d1, settings = cfg.trainer, cfg.objective_settings()
    assert (settings.clip_eps_low, settings.kl_coef, d1.inner_steps, d1.normalize_std) == (0.5, 0.04, 12, False)
    cfg = load_config(None, ["trainer.objective=coupled", "model.lora.enabled=true"])
    coupled, settings = cfg.trainer, cfg.objective_settings()
    assert (settings.clip_eps_high, settings.kl_coef, coupled.inner_steps, coupled.leave_one_out) == (0.5, 0.01, 2, True)
    ours = load_config(None, ["trainer.objective=coupled", "trainer.inner_steps=1"]).trainer
    assert ours.inner_steps == 1  # what the user sets wins
    with pytest.raises(ValueError, match="kl_coef"):
        build_objective("spg", ObjectiveSettings(kl_coef=0.1))
    with pytest.raises(ConfigError, match="trainer.objective"):
        load_config(None, ["trainer.objective=nope"])


def test_confidence_auto_is_each_familys_reference_rule():
    import os

    from rollouts import load_pretrained
    from rollouts.sampler import resolve_confidence

    fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "realarch")
    cfg = DecodingConfig()
    for kind, rule in (("llada", "chosen_prob"), ("dream", "entropy")):
        model = load_pretrained(os.path.join(fixtures, kind, "ckpt"))
        assert resolve_confidence(DiffusionPolicy(model, TokenIds(mask=0, pad=1, eos=1)), cfg) == rule
    assert resolve_confidence(tiny_policy(), cfg) == "max_prob"
    with pytest.raises(ValueError, match="chosen_prob"):
        resolve_confidence(tiny_policy(), DecodingConfig(confidence="chosen_prob", selection_temperature=0.5))


def test_two_ranks_give_the_same_update_as_one(tmp_path):
    """The global normalisation holds across processes: one update of a batch split over 2 ranks
    (DeepSpeed averages their gradients) equals the same update in 1 process, for every objective."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["PYTHONPATH"] = root
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    results = []
    for procs, parts in ((1, 1), (2, 2)):
        out = tmp_path / f"deltas_{procs}.pt"
        done = subprocess.run([torchrun, "--nproc_per_node", str(procs), os.path.join(root, "tests",
                               "rank_split_check.py"), ",".join(OBJECTIVES), str(parts), str(out)], env=env,
                              cwd=root, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(torch.load(out))
    for name in OBJECTIVES:
        one, two = results[0][name], results[1][name]
        assert max(float(d.abs().max()) for d in one.values()) > 0, name
        for key in one:
            assert torch.allclose(one[key], two[key], atol=1e-6, rtol=1e-4), (name, key)
