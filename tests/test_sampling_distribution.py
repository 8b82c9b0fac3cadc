"""The sampler draws from the distribution the docs state (docs/architecture.md, invariant 7), checked
independently of the sampler's and replay's code.

For every decoding path, a tiny bidirectional model with a 6-token vocabulary (pad == eos, as in
LLaDA and Dream) decodes 20,000 answers. The probability of each distinct path is computed here,
from the model's raw logits, by the documented rule — softmax(logits / T) over every token but
[MASK], LLaDA's even split of tokens per step, positions by the stated confidence rule — and the
empirical frequencies are compared with it by a chi-square test. Where the trajectory log-prob is
exact (every rule but chosen_prob), exp(replayed log-prob) must equal it too. A bug shared by the
sampler and replay (say, a token wrongly banned) fails here.
"""

import math
from collections import Counter
from itertools import product

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import LlamaConfig, LlamaForCausalLM

from rollouts import DecodingConfig, DiffusionPolicy, TokenIds, replay, sample

MASK, EOS = 1, 2  # pad == eos
VOCAB = 6
PROMPT = [3, 4]
N = 20_000


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                         tie_word_embeddings=False, pad_token_id=EOS, eos_token_id=EOS, bos_token_id=None)
    config.is_causal = False
    net = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        net.lm_head.weight.mul_(12)  # peaked enough that confidences differ, flat enough that every token occurs
    return net


# --- the documented rule, computed here from raw logits ---------------------------------------------

def raw_distribution(model, canvas, cfg, prompt=PROMPT) -> np.ndarray:
    """(L, V) sampling distribution at every answer position: softmax(logits / T) without [MASK]
    (T = 1 when decoding greedily), after `latent_steps` latent passes as documented."""
    ids = torch.tensor([prompt + list(canvas)])
    positions = torch.arange(ids.shape[1]).unsqueeze(0)

    def dist(logits, truncated=False):
        z = logits[0, len(prompt):].double()
        z[:, MASK] = -math.inf
        p = torch.softmax(z / (cfg.temperature or 1.0), -1)
        if not truncated:
            return p
        for row in p:  # top-k, then the smallest most-likely set reaching top-p; renormalised
            order = row.argsort(descending=True).tolist()
            kept = order[:cfg.top_k] if cfg.top_k else order
            mass, chosen = 0.0, []
            for token in kept:
                if mass >= cfg.top_p:
                    break
                chosen.append(token)
                mass += float(row[token])
            row[[t for t in range(len(row)) if t not in chosen]] = 0
            row /= row.sum()
        return p

    with torch.no_grad():
        p = dist(model(input_ids=ids, position_ids=positions).logits)
        table = model.get_input_embeddings().weight.double()
        for _ in range(cfg.latent_steps):
            embeds = table[ids[0]].clone()
            answer_masked = torch.tensor(list(canvas)) == MASK
            mixed = (1 - cfg.latent_mix) * table[MASK] + cfg.latent_mix * (p @ table)
            embeds[len(prompt):][answer_masked] = mixed[answer_masked]
            p = dist(model(inputs_embeds=embeds.float().unsqueeze(0), position_ids=positions).logits)
        if cfg.top_k or cfg.top_p < 1:
            p = dist(model(input_ids=ids, position_ids=positions).logits if not cfg.latent_steps else None, True)
    return p.numpy()


def confidences(p: np.ndarray, measure: str) -> np.ndarray:
    if measure == "max_prob":
        return p.max(-1)
    if measure == "margin":
        top = np.sort(p, -1)[:, ::-1]
        return top[:, 0] - top[:, 1]
    if measure == "entropy":
        return 1 + (p * np.log(np.where(p > 0, p, 1))).sum(-1) / math.log(VOCAB)
    raise ValueError(measure)


def path_probability(model, key, cfg, offset: int = 0, prompt=PROMPT) -> float:
    """P(path) by the documented rule; `key` = per step (re-masked positions, ((position, token), ...)).
    `offset`: a block-diffusion model's answer starts `offset` slots into the prompt's last block."""
    length, width = cfg.gen_length, cfg.block
    blocks = math.ceil((length + offset) / width)
    base, extra = divmod(cfg.total_steps, length // width)
    budgets = [base + (1 if b < extra else 0) for b in range(length // width)]
    canvas, block, in_block, remask_left, prob = [MASK] * length, 0, 0, cfg.remask_budget, 1.0
    for step, (remasked, commits) in enumerate(key):
        if block >= blocks:
            return 0.0  # decoding should have stopped
        p = raw_distribution(model, canvas, cfg, prompt)
        span = range(max(block * width - offset, 0), min((block + 1) * width - offset, length))
        # 1. revision: committed tokens whose probability fell below the bound, lowest first, within budget
        expected = []
        if cfg.remask == "running_confidence":
            doubtful = sorted((p[i, canvas[i]], i) for i in span if canvas[i] != MASK
                              and p[i, canvas[i]] < cfg.remask_threshold)
            expected = sorted(i for _, i in doubtful[:remask_left])
            remask_left -= len(expected)
        if sorted(remasked) != expected:
            return 0.0
        masked = [i for i in span if canvas[i] == MASK]
        for i in remasked:
            canvas[i] = MASK
        # 2. how many: LLaDA's even split of what is left over the steps left in the block
        steps_left = max(budgets[min(block, len(budgets) - 1)] - in_block, 1)  # an offset answer: one block more
        count = min(math.ceil((len(masked) + len(remasked)) / steps_left), len(masked))
        picked = [position for position, _ in commits]
        tokens = {position: token for position, token in commits}
        if cfg.confidence == "chosen_prob":  # LLaDA: conf = untempered p of the sampled token; sum over
            prob *= chosen_prob_selection(p, masked, count, tokens, cfg)  # the tokens drawn but not committed
        else:
            conf = confidences(p, cfg.confidence)
            if cfg.commit == "threshold":
                count = max(count, sum(conf[i] > cfg.threshold for i in masked))
            if len(picked) != count:
                return 0.0
            if cfg.commit == "random":  # a uniformly random ordered choice
                prob *= math.prod(1 / (len(masked) - j) for j in range(count))
            elif cfg.selection_temperature > 0:  # Plackett–Luce over confidence / τ
                left = list(masked)
                for position in picked:
                    weights = np.exp(conf[left] / cfg.selection_temperature)
                    prob *= weights[left.index(position)] / weights.sum()
                    left.remove(position)
            else:
                top = sorted(masked, key=lambda i: -conf[i])[:count]
                if sorted(top) != sorted(picked):
                    return 0.0
            for position in picked:  # 4. tokens: a draw from softmax(logits / T)
                prob *= p[position, tokens[position]]
        for position in picked:
            canvas[position] = tokens[position]
        in_block += 1
        if MASK not in [canvas[i] for i in span]:
            block, in_block = block + 1, 0
            if EOS in canvas[:block * width - offset]:
                block = blocks  # an answer holding EOS in its decoded blocks is done
    return prob if block >= blocks else 0.0


def chosen_prob_selection(p, masked, count, tokens, cfg) -> float:
    """P(the committed positions and tokens) when confidence is the untempered probability of the
    sampled token: tokens are drawn at every masked position, the `count` most confident commit."""
    untempered = p  # these tests use T = 1, where tempered and untempered coincide
    hidden = [i for i in masked if i not in tokens]
    if len(tokens) != count:
        return 0.0
    total = 0.0
    for draw in product(range(VOCAB), repeat=len(hidden)):
        full = {**tokens, **dict(zip(hidden, draw))}
        if any(full[i] == MASK for i in hidden):
            continue
        conf = {i: untempered[i, full[i]] for i in masked}
        top = sorted(masked, key=lambda i: -conf[i])[:count]
        if sorted(top) == sorted(tokens):
            total += math.prod(p[i, full[i]] for i in masked)
    return total


# --- the test -----------------------------------------------------------------------------------------

PATHS = {
    "low_confidence": dict(gen_length=3, temperature=1.0, confidence="max_prob"),
    "low_confidence_2_per_step": dict(gen_length=3, steps=2, temperature=0.7, confidence="max_prob"),
    "entropy": dict(gen_length=3, temperature=1.0, confidence="entropy"),
    "threshold": dict(gen_length=3, temperature=1.0, confidence="max_prob", commit="threshold", threshold=0.4),
    "random": dict(gen_length=3, temperature=1.0, commit="random", confidence="max_prob"),
    "plackett_luce": dict(gen_length=3, temperature=1.0, confidence="margin", selection_temperature=0.3),
    "revision": dict(gen_length=3, temperature=1.0, confidence="max_prob", remask="running_confidence",
                     remask_threshold=0.25, remask_budget=2),
    "latent_thinking": dict(gen_length=3, temperature=1.0, confidence="max_prob", latent_steps=1, latent_mix=0.6),
    "blocks_eos_stop": dict(gen_length=4, block_length=2, steps=4, temperature=1.0, confidence="max_prob"),
    "llada_chosen_prob": dict(gen_length=3, temperature=1.0, confidence="chosen_prob"),
    "top_k_top_p": dict(gen_length=3, temperature=1.0, confidence="max_prob", top_k=4, top_p=0.8),
}


def path_key(trajectory) -> tuple:
    bounds = trajectory.step_bounds()
    key = []
    for t in range(trajectory.num_steps):
        tokens = trajectory.event_token[bounds[t]:bounds[t + 1]]
        positions = trajectory.event_position[bounds[t]:bounds[t + 1]]
        key.append((tuple(int(p) for p, tok in zip(positions, tokens) if tok == MASK),
                    tuple((int(p), int(tok)) for p, tok in zip(positions, tokens) if tok != MASK)))
    return tuple(key)


@pytest.mark.parametrize("name", PATHS)
def test_sampler_draws_the_documented_distribution(model, name):
    cfg = DecodingConfig(**PATHS[name])
    policy = DiffusionPolicy(model, TokenIds(mask=MASK, pad=EOS, eos=EOS))
    trajectories = sample(policy, [PROMPT] * N, cfg, seeds=list(range(N)))
    counts = Counter(path_key(t) for t in trajectories)
    example = {}
    for t in trajectories:
        example.setdefault(path_key(t), t)
    expected = {key: path_probability(model, key, cfg) for key in counts}
    assert all(p > 0 for p in expected.values()), "the sampler took a path the rule gives probability 0"
    assert sum(expected.values()) <= 1 + 1e-6
    # chi-square over paths; paths expected fewer than 5 times pooled with the mass never observed
    observed, predicted, rest_observed, rest_predicted = [], [], 0, N * (1 - sum(expected.values()))
    for key, count in counts.items():
        if N * expected[key] >= 5:
            observed.append(count)
            predicted.append(N * expected[key])
        else:
            rest_observed += count
            rest_predicted += N * expected[key]
    observed.append(rest_observed)
    predicted.append(max(rest_predicted, 1e-9))
    predicted = np.array(predicted) * sum(observed) / sum(predicted)
    assert len(observed) > 5
    p_value = chisquare(observed, predicted).pvalue
    assert p_value > 1e-3, (name, p_value, len(counts))
    if name in ("revision", "blocks_eos_stop"):  # the paths exercised what they are named for
        feature = (lambda k: any(r for r, _ in k)) if name == "revision" else (lambda k: len(k) < 4)
        assert sum(c for k, c in counts.items() if feature(k)) > 100
    if cfg.confidence != "chosen_prob":  # the trajectory log-prob is exact: exp(replay) = P(path)
        keys = sorted(counts, key=counts.get, reverse=True)[:200]
        replayed = replay(policy, [example[k] for k in keys], cfg)
        for key, tokens, selection in zip(keys, replayed.token_logp, replayed.selection_logp):
            exact = float(torch.exp(tokens.detach().sum() + selection.detach().sum()))
            assert exact == pytest.approx(expected[key], rel=1e-4), key


# --- a block-diffusion model (SDAR's attention): blocks causal to each other, the prompt's last
# partial block shared with the answer's first slot (3 prompt tokens, blocks of 2 -> offset 1) ------

@pytest.fixture(scope="module")
def block_model():
    from rollouts.families import sdar

    torch.manual_seed(5)
    config = sdar.native_config({"vocab_size": VOCAB, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                                 "max_position_embeddings": 16, "pad_token_id": EOS, "eos_token_id": EOS,
                                 "block_length": 2})
    net = sdar.MODEL_CLASS(config).eval()
    with torch.no_grad():
        net.lm_head.weight.mul_(12)
    return net


@pytest.mark.parametrize("cache", ["none", "block"])
def test_block_diffusion_sampler_draws_the_documented_distribution(block_model, cache):
    prompt = [3, 4, 5]
    cfg = DecodingConfig(gen_length=4, block_length=2, steps=4, temperature=1.0, confidence="max_prob", cache=cache)
    policy = DiffusionPolicy(block_model, TokenIds(mask=MASK, pad=EOS, eos=EOS))
    assert policy.attention_block == 2
    n = N // 2
    trajectories = sample(policy, [prompt] * n, cfg, seeds=list(range(n)))
    assert {t.block_offset for t in trajectories} == {1}
    counts = Counter(path_key(t) for t in trajectories)
    expected = {key: path_probability(block_model, key, cfg, offset=1, prompt=prompt) for key in counts}
    assert all(p > 0 for p in expected.values()), "the sampler took a path the rule gives probability 0"
    frequent = {k: c for k, c in counts.items() if n * expected[k] >= 5}
    observed = [*frequent.values(), n - sum(frequent.values())]
    predicted = [n * expected[k] for k in frequent] + [n * (1 - sum(expected[k] for k in frequent))]
    assert len(observed) > 5 and chisquare(observed, predicted).pvalue > 1e-3
    assert any(len(k[0][1]) == 1 and k[0][1][0][0] == 0 for k in counts)  # the first block holds one slot
    keys = sorted(counts, key=counts.get, reverse=True)[:100]
    example = {}
    for t in trajectories:
        example.setdefault(path_key(t), t)
    replayed = replay(policy, [example[k] for k in keys], cfg)
    for key, tokens, selection in zip(keys, replayed.token_logp, replayed.selection_logp):
        assert float(torch.exp(tokens.detach().sum() + selection.detach().sum())) == pytest.approx(expected[key], rel=1e-4), key
