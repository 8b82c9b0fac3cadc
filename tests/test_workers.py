"""Rollout workers on Ray and in-process: same trajectories, LoRA-only sync, surviving a killed worker."""

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from rollouts import DecodingConfig
from rollouts.sampler import left_pad
from rollouts.workers import PolicySpec, WorkerPool, check_gpus, policy_weights, state_bytes

ray = pytest.importorskip("ray")
DECODING = DecodingConfig(gen_length=8, temperature=1.0, selection_temperature=0.2, latent_steps=1)


@dataclass
class SlowSpec(PolicySpec):
    """A policy whose forward takes `delay_s` longer, so a test can kill a worker mid-sample."""

    delay_s: float = 0.05

    def build(self):
        policy = super().build()
        policy.model.register_forward_pre_hook(lambda *_: time.sleep(self.delay_s))
        return policy


@pytest.fixture(scope="module")
def ray_session():
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # SlowSpec lives in this test module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from peft import LoraConfig

    from reasoning.modeling import TinyModelConfig, build_char_tokenizer, build_tiny_model

    path = str(tmp_path_factory.mktemp("base"))
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                                             max_positions=64), tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return PolicySpec(path=path, lora=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


@pytest.fixture(scope="module")
def trainer_policy(spec):
    """The trainer's copy: same base, an adapter whose weights have moved away from the init."""
    policy = spec.build()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    return policy


def prompts(n=6):
    from reasoning.modeling import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    return [tokenizer(f"compute {i}+{i * 7}")["input_ids"] for i in range(n)]


def assert_same(a, b):
    assert [(t.prompt_index, t.sample_index) for t in a] == [(t.prompt_index, t.sample_index) for t in b]
    for x, y in zip(a, b):
        assert np.array_equal(x.final_tokens, y.final_tokens)
        assert np.array_equal(x.event_position, y.event_position) and np.array_equal(x.event_token, y.event_token)
        assert np.allclose(x.event_logp, y.event_logp, atol=1e-4)


def test_workers_decode_on_a_gpu_they_see_and_ask_ray_only_for_gpus_it_has(spec):
    """(This machine has no GPU: what can be checked here is the CPU side and the refusal.)"""
    assert spec.resolved_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert PolicySpec(path=spec.path, device="cpu").resolved_device() == "cpu"
    check_gpus(cluster_gpus=1, num_workers=2, gpus=0.5)  # two workers share one GPU
    check_gpus(cluster_gpus=0, num_workers=2, gpus=0)  # CPU workers
    with pytest.raises(RuntimeError, match=r"gpus_per_worker.*need 4 GPUs; the Ray cluster has 1"):
        check_gpus(cluster_gpus=1, num_workers=2, gpus=2)


def test_in_process_group_orders_and_syncs(spec, trainer_policy):
    group = WorkerPool(spec, DECODING, num_workers=2, use_ray=False)
    state = policy_weights(trainer_policy.model)
    assert group.sync(state, version=3) == state_bytes(state)
    assert group.versions() == [3, 3]
    out = group.sample(prompts(3), group_size=2, seed=7)
    assert [(t.prompt_index, t.sample_index) for t in out] == [(i, g) for i in range(3) for g in range(2)]
    assert all(t.policy_version == 3 for t in out)
    assert len({tuple(t.final_tokens) for t in out}) > 1  # different seeds, different samples


def test_ray_group_matches_in_process_and_follows_lora_updates(ray_session, spec, trainer_policy):
    state = policy_weights(trainer_policy.model)
    full = sum(p.numel() * p.element_size() for p in trainer_policy.model.parameters())
    assert all("lora_" in name for name in state) and state_bytes(state) < 0.1 * full  # LoRA-only

    local = WorkerPool(spec, DECODING, num_workers=1, use_ray=False)
    remote = WorkerPool(spec, DECODING, num_workers=2, use_ray=True, address="local")
    try:
        assert remote.versions() == [0, 0]
        for group in (local, remote):
            group.sync(state, version=1)
        assert remote.versions() == [1, 1]
        assert_same(remote.sample(prompts(), group_size=3, seed=5), local.sample(prompts(), group_size=3, seed=5))

        from rollouts.sampler import left_pad

        ids, mask = left_pad(prompts(2), trainer_policy.ids.pad)
        answer = torch.full((2, DECODING.gen_length), trainer_policy.ids.mask)
        answer[:, :3] = 40
        with torch.no_grad():
            expected = trainer_policy.step_log_probs(ids, mask, answer, DECODING.temperature,
                                                     DECODING.latent_steps, DECODING.latent_mix)
        for got in remote.log_probs(ids, mask, answer):
            assert (got - expected).abs().max() < 1e-5

        # an update reaches every worker, and only the adapter travels
        with torch.no_grad():
            for name, p in trainer_policy.model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.5)
        new_state = policy_weights(trainer_policy.model)
        shipped = remote.sync(new_state, version=2)
        assert shipped == state_bytes(new_state) and remote.versions() == [2, 2]
        with torch.no_grad():
            expected = trainer_policy.step_log_probs(ids, mask, answer, DECODING.temperature,
                                                     DECODING.latent_steps, DECODING.latent_mix)
        for got in remote.log_probs(ids, mask, answer):
            assert (got - expected).abs().max() < 1e-5
    finally:
        remote.shutdown()


def test_killed_worker_is_restarted_and_its_shard_resampled(ray_session, spec, trainer_policy):
    slow = SlowSpec(path=spec.path, lora=spec.lora, delay_s=0.1)
    state = policy_weights(trainer_policy.model)
    local = WorkerPool(spec, DECODING, num_workers=1, use_ray=False)
    local.sync(state, version=4)
    expected = local.sample(prompts(4), group_size=2, seed=9)

    group = WorkerPool(slow, DECODING, num_workers=2, use_ray=True)
    try:
        group.sync(state, version=4)
        victim = group.pids()[0]
        killer = threading.Timer(1.0, os.kill, (victim, signal.SIGKILL))  # ~8 steps x 2 passes x 0.1 s per shard
        killer.start()
        got = group.sample(prompts(4), group_size=2, seed=9)
        killer.join()
        assert group.restarts == 1 and group.regenerated == 4  # its shard: 4 of the 8 samples, drawn again
        assert victim not in group.pids()  # a fresh process took its place
        assert group.versions() == [4, 4]  # ...holding the current adapter
        assert all(t.policy_version == 4 for t in got)
        assert_same(got, expected)
    finally:
        group.shutdown()


def test_worker_killed_before_a_sync_is_restored_and_synced(ray_session, spec, trainer_policy):
    """A worker that dies outside sample() — here SIGKILLed right as the weights go out — is restarted,
    gets the new adapter, and the sync returns normally; log-probs and pids survive a death too."""
    state = policy_weights(trainer_policy.model)
    group = WorkerPool(spec, DECODING, num_workers=2, use_ray=True)
    try:
        group.sync(state, version=1)
        victim = group.pids()[1]
        os.kill(victim, signal.SIGKILL)
        group.sync(state, version=2)
        assert group.restarts == 1 and group.versions() == [2, 2]
        assert victim not in group.pids()
        ids, mask = left_pad(prompts(2), trainer_policy.ids.pad)
        answer = torch.full((2, 8), trainer_policy.ids.mask)
        os.kill(group.pids()[0], signal.SIGKILL)
        logps = group.log_probs(ids, mask, answer)
        assert group.restarts == 2 and len(logps) == 2
        with torch.no_grad():
            mine = trainer_policy.step_log_probs(ids, mask, answer, DECODING.temperature, DECODING.latent_steps,
                                                 DECODING.latent_mix)
        assert all((lp - mine).abs().max() < 1e-5 for lp in logps)  # the restored worker holds the adapter
    finally:
        group.shutdown()
