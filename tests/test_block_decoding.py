"""Block-diffusion decoding on the SDAR and LLaDA2 fixtures (tests/fixtures/blockarch): the upstream
samplers' greedy answers, the exact cache of finished blocks, and replay of what it sampled.

The upstream rule is written here from the fixtures' README ("samplers") — SDAR's generate /
huggingface_bd3 and LLaDA2's generate — with the upstream attention masks, not with the project's
sampler: the prompt plus [MASK] up to whole blocks counted from position 0, blocks in order, per step
the argmax token at every masked slot with confidence = its probability under the plain softmax,
commit every slot above `threshold` if there are at least num_transfer_tokens[step] of them, else the
top num_transfer_tokens[step] — block // steps per step, one more on the first block % steps, fixed
before the block's first step and never recomputed (a top-k pick of an already committed slot
rewrites its own token); stop after a block holding a stop id. One deviation, needed by random weights only:
[MASK] is excluded from the softmax (a trained model puts no mass on it; these tiny ones do, and
upstream would then "commit" [MASK])."""

import math
import os

import numpy as np
import pytest
import torch

from rollouts import DecodingConfig, load_pretrained, load_tokenizer, make_policy, replay, sample

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "blockarch")


def fixture_policy(kind: str, block_length: int):
    path = os.path.join(HERE, kind, "ckpt")
    model = load_pretrained(path).eval()
    model.config.block_length = block_length  # what rollout.block_length sets when the model loads
    return make_policy(model, load_tokenizer(path))


def upstream_mask(kind: str, length: int, block: int) -> torch.Tensor:
    blocks = torch.tril(torch.ones(length // block, length // block))
    allowed = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)
    if kind == "sdar":
        return allowed.unsqueeze(0)  # (1, L, L) {0, 1}: 1 = may attend
    return allowed.log().unsqueeze(0).unsqueeze(0)  # LLaDA2: (1, 1, L, L) additive {0, -inf}


@torch.no_grad()
def upstream_greedy(kind, model, prompt, mask_id, gen_length, block, steps, threshold, stop_ids) -> list[int]:
    total = math.ceil((len(prompt) + gen_length) / block) * block
    x = torch.full((total,), mask_id)
    x[:len(prompt)] = torch.tensor(prompt)
    attention = upstream_mask(kind, total, block)
    transfer = [block // steps + (1 if i < block % steps else 0) for i in range(steps)]
    for b in range(len(prompt) // block, total // block):
        lo, hi = b * block, (b + 1) * block
        for step in range(steps + 1):
            masked = x[lo:hi] == mask_id
            if not masked.any():
                break
            mask = attention[..., :hi, :hi]
            logits = model(input_ids=x[None, :hi], attention_mask=mask, position_ids=torch.arange(hi)[None]).logits
            logits = logits[0, lo:hi].float()
            logits[:, mask_id] = -torch.inf  # [MASK] is never an answer (these random weights would pick it)
            conf, token = logits.softmax(-1).max(-1)
            conf = torch.where(masked, conf, -torch.inf)
            token = torch.where(masked, token, x[lo:hi])  # x0 = where(mask, x0, x)
            high = conf > threshold
            commit = high if high.sum() >= transfer[step] else torch.zeros_like(high).index_fill(
                0, conf.topk(transfer[step]).indices, True)
            x[lo:hi] = torch.where(commit, token, x[lo:hi])
        if torch.isin(x[len(prompt):hi], torch.tensor(stop_ids)).any():
            break
    return x[len(prompt):].tolist()


CASES = {  # kind: (block length, prompts of several lengths: whole blocks and partial ones)
    "sdar": (4, [[5, 6, 7, 8], [10, 11, 12, 13, 14, 15], [20, 21, 22, 23, 24, 25, 26]]),
    "llada2": (8, [[5, 6, 7, 8, 9, 10, 11, 12], [30, 31, 32], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]),
}


@pytest.mark.parametrize("threshold", [1.0, 0.05, 0.02])
@pytest.mark.parametrize("steps_per_block", ["block", "half"])
@pytest.mark.parametrize("kind", CASES)
def test_greedy_decoding_gives_the_upstream_samplers_answers(kind, steps_per_block, threshold):
    """Also with fewer steps than the block is long, where threshold commits in an early step leave
    fewer [MASK] than the fixed schedule expects (an even split of what remains would commit fewer)."""
    block, prompts = CASES[kind]
    policy = fixture_policy(kind, block)
    gen_length = 4 * block
    per_block = block if steps_per_block == "block" else block // 2
    stop_ids = list(policy.ids.stop) if kind == "sdar" else [policy.ids.eos]  # SDAR: generation_config's list
    for cache in ("none", "block"):
        cfg = DecodingConfig(gen_length=gen_length, steps=4 * per_block, temperature=0.0, commit="threshold",
                             threshold=threshold, confidence="max_prob", cache=cache)
        ours = sample(policy, prompts, cfg, seeds=[0] * len(prompts))  # block_length null: the model's own
        for prompt, trajectory in zip(prompts, ours):
            theirs = upstream_greedy(kind, policy.model, prompt, policy.ids.mask, gen_length, block, per_block,
                                     threshold, stop_ids)
            offset = len(prompt) % block
            assert trajectory.block_offset == offset and trajectory.block_length == block
            # our canvas is gen_length; SDAR's rounds up to whole blocks, so compare the whole blocks
            # we share: up to the block holding the first stop, or the last block that fits
            whole = gen_length - (gen_length + offset) % block
            stops = [i for i, t in enumerate(theirs[:whole]) if t in stop_ids]
            cut = min(whole, ((stops[0] + offset) // block + 1) * block - offset) if stops else whole
            assert trajectory.final_tokens[:cut].tolist() == theirs[:cut], (kind, prompt, cache)


RULES = {
    "low_confidence_sampled": dict(temperature=1.0),
    "threshold": dict(temperature=1.0, commit="threshold", threshold=0.2),
    "revision": dict(temperature=1.0, remask="running_confidence", remask_threshold=0.3),
    "plackett_luce": dict(temperature=1.0, selection_temperature=0.5, confidence="max_prob"),
    "random_positions": dict(temperature=0.8, commit="random", top_k=20),
}


@pytest.mark.parametrize("kind", CASES)
def test_cached_and_uncached_rollouts_are_identical_and_replay_matches(kind):
    block, prompts = CASES[kind]
    policy = fixture_policy(kind, block)
    for name, rule in RULES.items():
        runs = {cache: sample(policy, prompts * 2, DecodingConfig(gen_length=3 * block, cache=cache, **rule),
                              seeds=list(range(6))) for cache in ("none", "block")}
        for plain, cached in zip(runs["none"], runs["block"]):
            assert (plain.final_tokens == cached.final_tokens).all(), name
            assert (plain.event_position == cached.event_position).all(), name
            assert np.allclose(plain.event_logp, cached.event_logp, atol=1e-5, equal_nan=True), name
            assert np.allclose(plain.selection_logp, cached.selection_logp, atol=1e-5), name
            assert cached.exact_behaviour and cached.forward_tokens < plain.forward_tokens
        if name == "revision":
            assert sum(t.num_remasks for t in runs["block"]) > 0
        cfg = DecodingConfig(gen_length=3 * block, block_length=block, **rule)
        with torch.no_grad():  # one row per state, and block-wise packed (one forward per trajectory)
            per_state, packed = (replay(policy, runs["block"], cfg, packed=p, micro_batch=40) for p in (False, True))
        assert packed.forward_tokens < per_state.forward_tokens
        # packing sums attention over a longer, masked key sequence: float32 order differs (LLaDA2: 1e-5);
        # per state, rows batch with other prompts' (a state shared by answers is forwarded once), whose
        # padding changes the summation order too (SDAR: 1.3e-5)
        for replayed, tolerance in ((per_state, 3e-5), (packed, 3e-5)):
            for trajectory, tokens, selection in zip(runs["block"], replayed.token_logp, replayed.selection_logp):
                assert np.abs(tokens.numpy() - trajectory.event_logp[trajectory.commits]).max() < tolerance, name
                assert np.abs(selection.numpy() - trajectory.selection_logp).max() < tolerance, name


def test_block_decoding_settings_that_cannot_work_are_named():
    policy = fixture_policy("sdar", 4)
    with pytest.raises(ValueError, match="'block_length' \\(8\\) must equal the model's attention block length \\(4"):
        sample(policy, [[5, 6]], DecodingConfig(gen_length=16, block_length=8), seeds=[0])
    with pytest.raises(ValueError, match="'cache': prefix approximates"):
        sample(policy, [[5, 6]], DecodingConfig(gen_length=16, block_length=4, cache="prefix"), seeds=[0])


def test_the_exact_cache_is_refused_for_a_bidirectional_model(tiny_model, tiny_tokenizer):
    policy = make_policy(tiny_model, tiny_tokenizer)
    with pytest.raises(ValueError, match="'cache': block is the exact cache of block-diffusion models"):
        sample(policy, [[5, 6]], DecodingConfig(gen_length=8, block_length=4, cache="block"), seeds=[0])


def test_moe_routing_is_the_same_for_the_same_state_in_sampling_and_replay():
    """LLaDA2's router picks the same experts for a block's tokens whether the state is run as the
    whole canvas, through the exact cache (block fed alone against the stored prefix), or packed as
    replay packs it."""
    from rollouts.block_packing import pack, pack_batch
    from rollouts.kv_cache import FinishedBlocksCache

    block, prompts = CASES["llada2"]
    policy = fixture_policy("llada2", block)
    prompt = prompts[1]  # 3 tokens: the answer's first block holds 5 answer slots
    trajectory = sample(policy, [prompt], DecodingConfig(gen_length=3 * block, temperature=1.0), seeds=[4])[0]
    t = next(t for t in range(trajectory.num_steps)
             if trajectory.block_of(trajectory.event_position[trajectory.step_bounds()[t]]) == 1)
    state = torch.as_tensor(trajectory.states()[t])
    lo = len(prompt) + block - trajectory.block_offset  # canvas index of block 1
    chosen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: chosen.append(out[2]))
             for name, m in policy.model.named_modules() if name.endswith("mlp.gate")]

    def experts_at(run, first) -> list[torch.Tensor]:
        chosen.clear()
        with torch.no_grad():
            run()
        return [c.view(-1, c.shape[-1])[first:first + block].sort(-1).values for c in chosen]

    canvas = torch.cat([torch.tensor(prompt), state]).unsqueeze(0)
    whole = experts_at(lambda: policy.model(input_ids=canvas), lo)
    cache = FinishedBlocksCache(policy, torch.tensor([prompt]), torch.ones(1, len(prompt), dtype=torch.long), block,
                                torch.tensor([trajectory.block_offset]))
    one = torch.tensor([1])
    cache.logits(torch.tensor([0]), state.unsqueeze(0), one, torch.tensor([0]))  # stores prompt + block 0
    cached = experts_at(lambda: cache.logits(torch.tensor([0]), state.unsqueeze(0), one, torch.tensor([1])), 0)
    packed_seq = pack(prompt, trajectory.final_tokens, [(1, state.numpy())], block, trajectory.block_offset)
    ids, allowed, positions = pack_batch([packed_seq], block, policy.ids.pad)
    packed = experts_at(lambda: policy.model(input_ids=ids, attention_mask=allowed, position_ids=positions),
                        len(prompt) + trajectory.gen_length)
    for hook in hooks:
        hook.remove()
    assert len(whole) == len(cached) == len(packed) == 1  # one MoE layer in the fixture
    assert torch.equal(whole[0], cached[0]) and torch.equal(whole[0], packed[0])
