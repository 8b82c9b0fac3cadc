"""Preference training (`dlmrl prefer`): VRPO's loss recomputed from raw logits, its variance against
naive DPO's at the same number of ELBO draws, and the whole recipe on pairs built from a task
(held-out preference accuracy rises), TRL's DPO files, resume and export."""

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from reasoning.cli import main
from reasoning.config import load_config
from reasoning.prefer import reference_of, run_prefer
from reasoning.preference import PreferenceBatch, draw_masks, preference_loss
from test_estimators import EOS, MASK, PROMPT, tiny_policy

STOP = (EOS,)
LLADA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "realarch", "llada", "ckpt")
CHOSEN = torch.tensor([[3, 4, EOS, EOS], [5, 3, 4, 5]])
REJECTED = torch.tensor([[4, 4, 3, EOS], [3, EOS, EOS, EOS]])
BATCH = PreferenceBatch([PROMPT, [5, 4, 3]], CHOSEN, REJECTED)
TINY = ["model.tiny={hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64}", "data.task=sudoku4",
        "data.train_size=512", "data.test_size=64", "rollout.gen_length=20", "prefer.batch_size=16",
        "prefer.lr=1e-2", "prefer.beta=1.0", "prefer.log_every=1", "logging.progress=false",
        "logging.tensorboard=false"]


def raw_elbo(policy, prompt, answer, mask, fraction):
    """Σ_{k masked} log p(y_k | masked canvas) / p / L, from the model's raw logits ([MASK] excluded)."""
    canvas = [MASK if m else int(t) for t, m in zip(answer, mask)]
    with torch.no_grad():
        logits = policy.model(input_ids=torch.tensor([list(prompt) + canvas])).logits[0, len(prompt):].double()
    logits[:, MASK] = -math.inf
    logp = logits.log_softmax(-1).gather(-1, answer.long().unsqueeze(-1)).squeeze(-1)
    return float(logp[mask].sum()) / fraction / len(answer)


def test_vrpo_counts_are_stratified_within_each_answer():
    draws = draw_masks(torch.cat([CHOSEN, REJECTED]), STOP, 4, stratified=True, generator=torch.Generator().manual_seed(3))
    for row, size in enumerate([3, 4, 4, 2]):  # answer tokens up to and including the first [EOS]
        counts = draws.masks[row].sum(1).tolist()
        assert any(counts == [(int(round(k + j * size / 4)) - 1) % size + 1 for j in range(4)] for k in range(1, size + 1))
        assert not draws.masks[row, :, size:].any()  # never past the first stop token
        assert draws.fractions[row].tolist() == pytest.approx([c / size for c in counts])


@pytest.mark.parametrize("estimator", ["vrpo", "dpo"])
def test_the_loss_is_dpo_on_elbo_estimates_recomputed_from_raw_logits(estimator):
    policy, reference = tiny_policy(seed=8), tiny_policy(seed=9)
    beta, n = 0.5, 3
    loss, stats = preference_loss(policy, reference_of(policy, False, reference.model), BATCH, STOP, beta, n,
                                  estimator, torch.Generator().manual_seed(0))
    # the masks drawn (checked above): the policy's, then — naive DPO only — the reference's own
    g = torch.Generator().manual_seed(0)
    answers = torch.cat([CHOSEN, REJECTED])
    mine = draw_masks(answers, STOP, n, stratified=estimator == "vrpo", generator=g)
    theirs = mine if estimator == "vrpo" else draw_masks(answers, STOP, n, stratified=False, generator=g)
    prompts = BATCH.prompt_ids * 2

    def estimate(model, draws, row):
        return sum(raw_elbo(model, prompts[row], answers[row], draws.masks[row, j], float(draws.fractions[row, j]))
                   for j in range(n)) / n

    reward = [beta * (estimate(policy, mine, r) - estimate(reference, theirs, r)) for r in range(4)]
    expected = np.mean([-math.log(1 / (1 + math.exp(-(reward[i] - reward[i + 2])))) for i in range(2)])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert stats.chosen_reward.tolist() == pytest.approx(reward[:2], rel=1e-4)
    loss.backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in reference.model.parameters())  # frozen
    assert any(p.grad.abs().sum() > 0 for p in policy.model.parameters())


def test_vrpo_estimate_has_lower_variance_than_naive_dpo_at_the_same_draws():
    """The pair score β[(B̂_θ − B̂_ref)(y_w) − (B̂_θ − B̂_ref)(y_l)] over 200 seeds, 4 draws each, with a
    reference that differs from the policy. Both estimate the same quantity; VRPO's errors cancel."""
    policy, reference = tiny_policy(seed=8), tiny_policy(seed=8)
    with torch.no_grad():
        for p in reference.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    scores = {}
    for estimator in ("vrpo", "dpo"):
        values = []
        for seed in range(200):
            with torch.no_grad():
                _, stats = preference_loss(policy, reference_of(policy, False, reference.model), BATCH, STOP, 1.0, 4,
                                           estimator, torch.Generator().manual_seed(seed))
            values.append((stats.chosen_reward - stats.rejected_reward).numpy())
        scores[estimator] = np.stack(values)  # (seeds, pairs)
    var_vrpo, var_dpo = scores["vrpo"].var(0), scores["dpo"].var(0)
    assert (var_vrpo < 0.5 * var_dpo).all(), (var_vrpo, var_dpo)
    gap = np.abs(scores["vrpo"].mean(0) - scores["dpo"].mean(0))
    assert (gap < 4 * np.sqrt(var_dpo / 200 + var_vrpo / 200)).all()  # the same mean


def test_preference_training_on_task_pairs_raises_held_out_preference_accuracy(tmp_path):
    cfg = load_config(None, TINY + ["prefer.steps=50", "prefer.eval_every=25", "prefer.checkpoint_every=0",
                                    f"output_dir={tmp_path}", "name=p"])
    result = run_prefer(cfg)
    assert result["before/elbo/prefers_chosen"] <= 0.6
    assert result["eval/elbo/prefers_chosen"] > result["before/elbo/prefers_chosen"] + 0.2, result
    assert result["eval/rewards/accuracies"] > 0.7 and result["eval/rewards/margins"] > 0
    lines = [json.loads(line) for line in open(tmp_path / "p" / "metrics.jsonl")]
    train = [m for m in lines if "loss" in m]
    assert len(train) == 50 and all("rewards/margins" in m and m["elbo/score_var"] >= 0 for m in train)
    assert os.path.isdir(os.path.join(result["checkpoint"], "ds"))  # optimizer state: the run can resume


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    common = TINY + ["prefer.eval_every=0", "prefer.checkpoint_every=2", "prefer.eval_n=8", f"output_dir={tmp_path}"]
    whole = run_prefer(load_config(None, common + ["name=whole", "prefer.steps=4"]))
    run_prefer(load_config(None, common + ["name=cut", "prefer.steps=2"]))
    resumed = run_prefer(load_config(None, common + ["name=cut", "prefer.steps=4", "prefer.resume=auto"]))
    a = load_file(os.path.join(whole["checkpoint"], "model.safetensors"))
    b = load_file(os.path.join(resumed["checkpoint"], "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "cut" / "metrics.jsonl") if '"loss"' in line]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("conversational", [False, True])
def test_trl_dpo_files_train_a_lora_adapter_that_exports(tmp_path, conversational):
    rows = []
    for i in range(12):
        prompt, chosen, rejected = f"{i}+1=", f"<answer>{i + 1}</answer>", f"<answer>{i + 2}</answer>"
        if conversational:
            prompt = [{"role": "user", "content": prompt}]
            chosen, rejected = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        rows.append(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}))
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(rows) + "\n")
    cfg = load_config(None, TINY + [f"prefer.train_file={path}", "data.test_size=4", "prefer.steps=2",
                                    "prefer.batch_size=4", "model.lora.enabled=true", "model.lora.r=4",
                                    f"model.path={LLADA}", "prefer.checkpoint_every=0", "prefer.eval_every=0",
                                    f"output_dir={tmp_path}", "name=f"])
    result = run_prefer(cfg)
    assert result["steps"] == 2 and os.path.isdir(os.path.join(result["checkpoint"], "adapter"))
    assert math.isfinite(result["loss"]) and "eval/rewards/accuracies" in result
    out = tmp_path / "exported"  # merged into the LLaDA snapshot's own format, as after SFT and RL
    assert main(["export", str(tmp_path / "f"), str(out)]) == 0
    assert json.load(open(out / "config.json")) == json.load(open(os.path.join(LLADA, "config.json")))
