"""The simple low-confidence sampler: fills the canvas, honours blocks and step budgets."""

import pytest
import torch

from rollouts import DecodingConfig, DiffusionPolicy, TokenIds, generate
from rollouts.sampler import commit_schedule, left_pad


def test_commit_schedule_splits_evenly():
    assert commit_schedule(10, 4) == [3, 3, 2, 2]
    assert sum(commit_schedule(7, 7)) == 7


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("block,steps,commit", [(None, None, "low_confidence"), (4, 2, "low_confidence"),
                                                (8, 3, "random")])
def test_generate_fills_canvas(tiny_model, tiny_tokenizer, block, steps, commit):
    policy = DiffusionPolicy(tiny_model, TokenIds.from_tokenizer(tiny_tokenizer))
    cfg = DecodingConfig(gen_length=8, block_length=block, steps=steps, commit=commit)
    prompts = [tiny_tokenizer("abc")["input_ids"], tiny_tokenizer("a")["input_ids"]]
    out = generate(policy, prompts, cfg, torch.Generator().manual_seed(0))
    assert out.tokens.shape == (2, 8)
    assert not (out.tokens == policy.ids.mask).any() and not (out.tokens == policy.ids.pad).any()
    assert out.forward_passes == (8 // cfg.block) * cfg.steps_per_block


def test_greedy_decoding_is_deterministic_and_padding_invariant(tiny_model, tiny_tokenizer):
    policy = DiffusionPolicy(tiny_model, TokenIds.from_tokenizer(tiny_tokenizer))
    cfg = DecodingConfig(gen_length=6)
    prompt = tiny_tokenizer("hello")["input_ids"]
    alone = generate(policy, [prompt], cfg).tokens
    padded = generate(policy, [prompt, tiny_tokenizer("a much longer prompt")["input_ids"]], cfg).tokens
    assert torch.equal(alone[0], padded[0])  # left padding does not change the answer


def test_bad_decoding_settings_are_rejected():
    with pytest.raises(ValueError, match="block_length"):
        DecodingConfig(gen_length=10, block_length=3)
    with pytest.raises(ValueError, match="steps"):
        DecodingConfig(gen_length=8, steps=9)
