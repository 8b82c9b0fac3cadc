"""The lm-evaluation-harness model (reasoning/harness.py): lm-eval runs a dlmrl model end to end,
its answers are `dlmrl sample`'s, and its Monte-Carlo log-likelihood agrees with the exact value."""

from __future__ import annotations

import glob
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from lm_eval.api.instance import Instance

from reasoning.cli import main
from reasoning.harness import DlmrlLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "realarch")
LLADA = os.path.join(FIXTURES, "llada", "ckpt")
DECODING = "gen_length=8,steps=4,block_length=4"


def test_lm_eval_runs_a_dlmrl_model_and_its_answers_are_dlmrl_samples(tmp_path, capsys):
    out = tmp_path / "lm_eval"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "reasoning.cli", "lm-eval", "--model", "dlmrl",
         "--model_args", f"pretrained={LLADA},{DECODING},mc_num=32,mc_batch_size=16",
         "--tasks", "dlmrl_tiny_gen,dlmrl_tiny_choice", "--include_path", "tests/fixtures/lm_eval",
         "--apply_chat_template", "--limit", "8", "--batch_size", "3", "--log_samples", "--output_path", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.load(open(glob.glob(str(out / "*" / "results_*.json"))[0]))["results"]
    assert 0.0 <= results["dlmrl_tiny_choice"]["acc,none"] <= 1.0
    assert "exact_match,none" in results["dlmrl_tiny_gen"]
    docs = [json.loads(line) for line in open(glob.glob(str(out / "*" / "samples_dlmrl_tiny_gen_*.jsonl"))[0])]
    choices = [json.loads(line) for line in open(glob.glob(str(out / "*" / "samples_dlmrl_tiny_choice_*.jsonl"))[0])]
    assert len(docs) == 8 and len(choices) == 8 and all(len(c["resps"]) == 3 for c in choices)
    # the same prompts through `dlmrl sample` (the chat template applied, the same decoding)
    decoding = [f"eval.decoding.{kv}" for kv in DECODING.split(",")]
    for doc in docs:
        capsys.readouterr()
        assert main(["sample", LLADA, "--prompt", doc["doc"]["question"], "--output", str(tmp_path / "s"),
                     *decoding]) == 0
        completion = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["completion"]
        assert doc["resps"][0][0] == completion.split("\n\n")[0], doc["doc"]["question"]


def exact_log_likelihood(model, context: list[int], target: list[int], mask_id: int, shift: bool) -> float:
    """log p(target | context) averaged over every order of unmasking the target (any-order
    autoregressive; equal to the masked-diffusion bound): the model called directly."""
    total, orders = 0.0, list(itertools.permutations(range(len(target))))
    for order in orders:
        canvas = context + [mask_id] * len(target)
        for position in order:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([canvas])).logits[0].float()
            if shift:  # Dream: the output at i predicts token i + 1
                logits = torch.cat([logits[:1], logits[:-1]])
            logits[:, mask_id] = -math.inf  # the sampler never proposes [MASK]
            index = len(context) + position
            total += float(logits[index].log_softmax(-1)[target[position]])
            canvas[index] = target[position]
    return total / len(orders)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_monte_carlo_loglikelihood_is_within_5_percent_of_enumerating_the_orders(family):
    lm = DlmrlLM(pretrained=os.path.join(FIXTURES, family, "ckpt"), mc_num=2048, mc_batch_size=512,
                 check_greedy=False)
    context, continuation = "7+7=", "14"
    ctx_ids, whole = lm.tok_encode(context), lm.tok_encode(context + continuation)
    target = whole[len(ctx_ids):]
    assert len(target) == 2
    exact = exact_log_likelihood(lm.policy.model, ctx_ids, target, lm.policy.ids.mask, lm.policy.shift_logits)
    (estimate, greedy), = lm.loglikelihood([Instance("loglikelihood", {}, (context, continuation), 0)])
    assert abs(estimate - exact) <= 0.05 * abs(exact), (estimate, exact)
    assert greedy is False
    # the rolling form scores the whole text after the prefix token by the same estimate
    text = "14"
    prefix = [lm.prefix_token_id]
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    exact_rolling = exact_log_likelihood(lm.policy.model, prefix, lm.tok_encode(text, add_special_tokens=False),
                                         lm.policy.ids.mask, lm.policy.shift_logits)
    assert abs(rolling - exact_rolling) <= 0.05 * abs(exact_rolling), (rolling, exact_rolling)


@pytest.mark.parametrize("family", ["sdar", "llada2"])
def test_block_models_loglikelihood_is_within_5_percent_of_blocks_in_order_and_orders_within_each(family):
    """Block-diffusion: log p(y | c) = sum over blocks in order of the any-order average within the block,
    the earlier blocks clean. Three tokens, two in one block and one in the next."""
    lm = DlmrlLM(pretrained=os.path.join(ROOT, "tests", "fixtures", "blockarch", family, "ckpt"), mc_num=2048,
                 mc_batch_size=256, check_greedy=False)
    width, mask = lm.policy.attention_block, lm.policy.ids.mask
    context, target = list(range(5, 5 + 2 * width - 2)), [11, 12, 13]  # canvas positions 2w-2, 2w-1 | 2w
    canvas, exact = context + [mask] * 3, 0.0
    for group in ([0, 1], [2]):
        orders = list(itertools.permutations(group))
        for order in orders:
            state = list(canvas)
            for i in order:
                with torch.no_grad():
                    logits = lm.policy.model(input_ids=torch.tensor([state]),
                                             attention_mask=torch.ones(1, len(state), dtype=torch.long)).logits[0]
                logits = logits.float()
                logits[:, mask] = -math.inf
                exact += float(logits[len(context) + i].log_softmax(-1)[target[i]]) / len(orders)
                state[len(context) + i] = target[i]
        for i in group:
            canvas[len(context) + i] = target[i]
    (estimate, _), = lm._loglikelihood_tokens([(None, context, target)])
    assert abs(estimate - exact) <= 0.05 * abs(exact), (estimate, exact)


@pytest.mark.parametrize("path, prompt, length", [(LLADA, [23, 11, 23, 29], 3),  # "7+7=" in its tokenizer
                                                 (os.path.join(ROOT, "tests", "fixtures", "blockarch", "sdar", "ckpt"),
                                                  [5, 6, 7, 8], 4)])  # one whole SDAR block
def test_greedy_check_answers_whether_greedy_decoding_writes_the_continuation(path, prompt, length):
    from rollouts import DecodingConfig, sample

    lm = DlmrlLM(pretrained=path, mc_num=2, mc_batch_size=2)
    decoding = DecodingConfig(gen_length=length, steps=length, temperature=0.0)  # the sampler, one token a step
    written = [int(t) for t in sample(lm.policy, [prompt], decoding, seeds=[0])[0].final_tokens]
    (_, yes), = lm._loglikelihood_tokens([(None, prompt, written)])
    other = written[:-1] + [next(t for t in range(10, 40) if t != written[-1])]
    (_, no), = lm._loglikelihood_tokens([(None, prompt, other)])
    assert yes is True and no is False


def test_a_misspelt_model_arg_is_an_error_naming_it_and_the_nearest_valid_one():
    """(`dlmrl lm-eval` prints a ConfigError as one line, exit 2, like every verb: cli.lm_eval_command.)"""
    with pytest.raises(Exception, match="model_args 'gen_lenght'.*gen_length"):
        DlmrlLM(pretrained=LLADA, gen_lenght=8)


@pytest.mark.parametrize("args,key", [({}, "pretrained"), ({"gen_length": "abc"}, "gen_length"),
                                      ({"device": "banana"}, "device"), ({"threads": -1}, "threads"),
                                      ({"mc_num": "abc"}, "mc_num"), ({"check_greedy": "word"}, "check_greedy")])
def test_every_model_arg_is_checked_and_named(args, key):
    from reasoning.schema import ConfigError

    arguments = {"pretrained": LLADA, **args} if key != "pretrained" else {}
    with pytest.raises(ConfigError, match=f"model_args '{key}'"):
        DlmrlLM(**arguments)


def test_device_in_model_args_wins_over_lm_evals_own_default():
    lm = DlmrlLM.create_from_arg_string(f"pretrained={LLADA},device=cpu,mc_num=2", {"device": "cuda", "batch_size": 4})
    assert lm.mc_num == 2 and lm._batch_size == 4
