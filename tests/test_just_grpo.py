"""JustGRPO against its reference (LeapLabTHU/JustGRPO@eebe50e `grpo.py`), recomputed here from raw
logits and never through the objective's code: the gradient of Σ_i Σ_t −A_i ℓ_{i,t} / (L · v̄) with
ℓ_{i,t} = log softmax(f([q, y_<t, [MASK]^{L−t}]))[y_t] over every position (pads included), v̄ = the
answers with A ≠ 0, and A = (r − mean) / (sample std + 1e-4)."""

import math

import pytest
import torch

from reasoning.advantages import group_advantages
from reasoning.config import load_config
from reasoning.objectives import StepBatch, build_objective, paper_defaults
from reasoning.schema import ConfigError
from rollouts import DecodingConfig, sample
from test_estimators import EOS, MASK, PROMPT, tiny_policy

L = 4
JUST_GRPO = DecodingConfig(gen_length=L, block_length=1, temperature=1.0, confidence="max_prob", decode_past_stop=True)


def rollouts(policy, n=8):
    trajectories = sample(policy, [PROMPT] * n, JUST_GRPO, seeds=list(range(n)))
    for i, t in enumerate(trajectories):
        t.prompt_index, t.sample_index = 0, i
    return trajectories


def test_its_advantage_divides_by_the_sample_std():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    mean = sum(rewards) / 6
    sample_std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 5)  # Bessel: n − 1
    got = group_advantages(rewards, 6, normalize_std=True, std_correction=1).values
    assert got.tolist() == pytest.approx([(r - mean) / (sample_std + 1e-4) for r in rewards], rel=1e-6)
    assert paper_defaults("just_grpo")["std_correction"] == 1 and paper_defaults("trajectory").get("std_correction", 0) == 0


def test_its_rollout_decodes_every_position_left_to_right_past_the_stop():
    trajectories = rollouts(tiny_policy(scale=2.0), n=16)
    assert any(EOS in list(t.final_tokens[:-1]) for t in trajectories)  # some answers stop early ...
    for t in trajectories:
        assert int(t.commits.sum()) == L  # ... and still decode (and train) every position
        assert t.event_position[t.commits].tolist() == list(range(L))  # one token per step, in order


def test_its_gradient_is_the_exact_left_to_right_likelihood_over_l_times_informative_answers():
    policy = tiny_policy(scale=2.0)
    trajectories = rollouts(policy)
    rewards = [float(t.final_tokens[0] == 3) for t in trajectories]
    assert 0 < sum(rewards) < len(rewards)
    adv = group_advantages(rewards, len(rewards), normalize_std=True, std_correction=1).values
    adv[0] = 0.0  # an answer with A = 0 does not count in v̄
    batch = StepBatch(trajectories, adv, JUST_GRPO, (EOS,))
    objective = build_objective("just_grpo")
    prep = objective.prepare(policy, batch, torch.Generator().manual_seed(0))
    units = objective.units(batch, prep)
    informative = int((adv != 0).sum())
    assert units == L * informative
    loss, _ = objective.loss(policy, batch, prep, list(range(len(trajectories))), units)
    loss.backward()
    got = [p.grad.clone() for p in policy.model.parameters()]

    reference = tiny_policy(scale=2.0)  # the same weights, scored by hand
    total = 0.0
    for a, t in zip(adv.tolist(), trajectories):
        y = [int(x) for x in t.final_tokens]
        for step in range(L):
            canvas = PROMPT + y[:step] + [MASK] * (L - step)
            logits = reference.model(input_ids=torch.tensor([canvas])).logits[0, len(PROMPT) + step].double()
            logits = logits.masked_fill(torch.arange(len(logits)) == MASK, -math.inf)
            total = total - a * logits.log_softmax(-1)[y[step]]
    (total / (L * informative)).backward()
    for mine, theirs in zip(got, reference.model.parameters()):
        assert torch.allclose(mine.double(), theirs.grad.double(), atol=1e-6, rtol=1e-4)


def test_a_config_with_another_decoding_rule_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer: {objective: just_grpo}\nrollout: {gen_length: 8, block_length: 8}\n")
    with pytest.raises(ConfigError, match="'rollout.block_length'.*expected 1, got 8"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="'rollout.decode_past_stop'"):
        load_config(str(path), ["rollout.block_length=1"])
    cfg = load_config(str(path), ["rollout.block_length=1", "rollout.decode_past_stop=true"])
    assert cfg.trainer.std_correction == 1 and cfg.trainer.normalize_std is True
    assert cfg.eval_decoding().decode_past_stop is False  # evaluation reads the text up to the stop only
