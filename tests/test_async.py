"""Asynchronous RL (`rollout.async`): the staleness bound, decoupled-PPO importance weights,
equality with the synchronous run at max_staleness 0, several trainer ranks fed by one Ray
worker, a lost Ray node, and a Ray address with nothing behind it."""

import copy
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from helpers import ROOT, TINY, adapter, config, torchrun_train, train_steps

from reasoning.objectives import StepBatch, build_objective
from reasoning.rl import run_rl
from reasoning.schema import ConfigError
from rollouts import DecodingConfig, make_policy, sample


def test_max_staleness_zero_is_the_synchronous_run_bit_for_bit(tmp_path):
    sync = config(tmp_path, "name=sync", "trainer.steps=3")
    asynchronous = config(tmp_path, "name=async", "trainer.steps=3", "rollout.async.enabled=true",
                          "rollout.async.max_staleness=0")
    run_rl(sync)
    run_rl(asynchronous)
    a, b = adapter(sync.run_dir, 3), adapter(asynchronous.run_dir, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["reward"] for m in train_steps(sync.run_dir)] == [m["reward"] for m in train_steps(asynchronous.run_dir)]


def test_async_overlaps_and_keeps_within_the_staleness_bound(tmp_path):
    """max_staleness 1: batch k+1 is sampled while step k trains, so it is one version behind and
    trained with importance weights; nothing is dropped."""
    cfg = config(tmp_path, "trainer.steps=4", "rollout.async.enabled=true", "rollout.async.max_staleness=1")
    result = run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and result["steps"] == 4
    assert set(result["staleness_histogram"]) <= {"0", "1"} and result["staleness_histogram"].get("1", 0) > 0
    assert result["dropped_fraction"] == 0
    assert all(m["async/staleness_max"] <= 1 for m in steps)
    assert all(0 <= m["async/trainer_sampled_fraction"] <= 1 for m in steps)  # the waiting trainer's share
    weighted = [m for m in steps if "async/importance_weight_mean" in m]
    assert weighted and all(0.5 < m["async/importance_weight_mean"] < 2 for m in weighted)
    # the run drew its rollout / update / sync timeline; `dlmrl show --compare` draws two runs in one
    assert os.path.isfile(os.path.join(cfg.run_dir, "timeline.png"))
    from reasoning.cli import main

    out = tmp_path / "both.png"
    assert main(["show", cfg.run_dir, "--compare", cfg.run_dir, "--out", str(out)]) == 0 and out.stat().st_size > 0


def test_a_worker_left_behind_makes_stale_groups_that_are_dropped_and_counted(tmp_path, monkeypatch):
    """A worker that fails every weight sync stays on version 0: its groups are trained with
    importance weights while 1 version behind, then dropped (and counted), never trained as fresh."""
    from rollouts.workers import RolloutWorker

    original = RolloutWorker.load_weights

    def refuse_updates(self, state, version):
        if version > 0:
            raise RuntimeError("held back")
        return original(self, state, version)

    monkeypatch.setattr(RolloutWorker, "load_weights", refuse_updates)
    cfg = config(tmp_path, "trainer.steps=4", "rollout.async.enabled=true", "rollout.async.max_staleness=1",
                 "rollout.async.trainer_samples=false")  # every sample from the held-back worker
    result = run_rl(cfg)
    steps = train_steps(cfg.run_dir)
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert steps[-1]["rollout/sync_failures"] >= 1
    dropped = [m for m in steps if m["async/dropped_groups"] > 0]
    assert dropped, [m["async/staleness_max"] for m in steps]
    assert all(m["train/samples"] == 0 for m in dropped if m["async/dropped_groups"] == cfg.trainer.prompts_per_step)
    assert result["dropped_fraction"] > 0 and max(int(k) for k in result["staleness_histogram"]) >= 2
    assert result["policy_version"] <= 2  # once everything is too stale nothing updates the weights


def test_a_waiting_trainer_samples_unclaimed_chunks_itself():
    """The producer works through a batch in chunks; the trainer, once it waits for that batch,
    claims the chunks nobody started. Every job is sampled exactly once and the batch comes back
    in (prompt, sample) order, stamped with who sampled it."""
    import threading

    from types import SimpleNamespace

    from reasoning.rollout_sources import AsyncRollouts
    from rollouts.workers import make_jobs

    who: dict[tuple[int, int], str] = {}
    lock = threading.Lock()

    def plan(step):
        return [0, 1, 2, 3], make_jobs([[step, p] for p in range(4)], 4, seed=step)

    def sampler(name, seconds):
        def run(jobs):
            time.sleep(seconds)
            out = []
            for job in jobs:
                with lock:
                    assert (job.prompt_ids[0], job.prompt_index, job.sample_index) not in who
                    who[job.prompt_ids[0], job.prompt_index, job.sample_index] = name
                out.append(SimpleNamespace(prompt_index=job.prompt_index, sample_index=job.sample_index))
            return out
        return run

    source = AsyncRollouts(plan, sampler("worker", 0.2), lambda w, v: None, 1, 1, 3, time.perf_counter,
                           trainer_sample=sampler("trainer", 0.2), chunks=8)
    try:
        for step in (1, 2, 3):
            rollouts = source.get(step)
            assert [(t.prompt_index, t.sample_index) for t in rollouts.trajectories] == [
                (p, g) for p in range(4) for g in range(4)]
            by_trainer = sum(who[step, t.prompt_index, t.sample_index] == "trainer" for t in rollouts.trajectories)
            assert rollouts.trainer_sampled == by_trainer and 0 < by_trainer < 16, by_trainer
            assert rollouts.trainer_sampling[0] < rollouts.trainer_sampling[1] <= rollouts.sampling[1] + 0.05
            source.step_done(step)
    finally:
        source.close()


def test_importance_weights_are_exp_of_proximal_minus_behaviour(tiny_model, tiny_tokenizer):
    """Hand-built: trajectories sampled by these very weights, their recorded behaviour log-probs
    shifted by a known δ per commit and stamped one version old. Then π_prox = the sampler's
    log-prob (replay consistency), so w = exp(δ) — and units with w above the cap are masked."""
    policy = make_policy(tiny_model, tiny_tokenizer)
    decoding = DecodingConfig(gen_length=8, steps=8, temperature=1.0)
    prompts = [tiny_tokenizer.encode("12+") for _ in range(2)]
    trajectories = sample(policy, prompts, decoding, seeds=[1, 2])
    stale = [copy.deepcopy(t) for t in trajectories]
    generator = torch.Generator().manual_seed(0)
    deltas = []
    for t in stale:
        delta = torch.empty(len(t.event_logp)).uniform_(-1.0, 1.0, generator=generator)
        delta[t.commits.nonzero()[0][:1]] = -3.0  # one unit with w = e^3 > cap 5: masked
        t.event_logp = (torch.as_tensor(t.event_logp) + delta).numpy()
        t.policy_version = 0
        deltas.append(delta[torch.as_tensor(t.commits)])
    advantages = torch.tensor([1.0, -1.0])
    batch = StepBatch(stale, advantages, decoding, (tiny_tokenizer.eos_token_id,), policy_version=1)
    objective = build_objective("trajectory", importance_cap=5.0)
    prep = objective.prepare(policy, batch, torch.Generator().manual_seed(0))
    units = objective.units(batch, prep)
    loss, stats = objective.loss(policy, batch, prep, [0, 1], units)  # π_prox from this forward (θ = θ_prox)
    for i, delta in enumerate(deltas):
        expected = torch.exp(-delta)  # w = π_prox / π_behav = exp(ℓ − (ℓ + δ))
        expected[expected > 5.0] = 0.0
        assert torch.allclose(prep.importance[i], expected, atol=1e-3), (prep.importance[i], expected)
        assert (prep.importance[i] == 0).sum() == 1
    # the loss is the importance-weighted PPO surrogate; at θ = θ_prox the ratio is 1: −Σ w·A / units
    by_hand = -sum(float(prep.importance[i].sum()) * float(advantages[i]) for i in range(2)) / units
    assert float(loss) == pytest.approx(by_hand, abs=1e-4)
    assert stats.importance_masked == 2
    # fresh samples (same version) are not reweighted
    fresh = StepBatch(trajectories, advantages, decoding, (tiny_tokenizer.eos_token_id,), policy_version=0)
    assert objective.prepare(policy, fresh, torch.Generator().manual_seed(0)).importance == {}


def test_async_staleness_needs_an_objective_that_records_behaviour(tmp_path):
    with pytest.raises(ConfigError, match="rollout.async.max_staleness"):
        config(tmp_path, "rollout.async.enabled=true", "rollout.async.max_staleness=1", "trainer.objective=mean_field")
    with pytest.raises(ConfigError, match="rollout.async.max_staleness"):
        config(tmp_path, "rollout.async.max_staleness=-1")
    config(tmp_path, "rollout.async.enabled=true", "rollout.async.max_staleness=0", "trainer.objective=mean_field")


def test_two_trainer_ranks_fed_by_one_ray_worker(tmp_path):
    """torchrun --nproc_per_node 2 + ray.enabled with one worker, async: rank 0 alone talks to Ray
    and broadcasts each batch; every rank trains its half."""
    done = torchrun_train(tmp_path, "mr", "trainer.prompts_per_step=4", "trainer.steps=3", "ray.enabled=true",
                          "ray.num_workers=1", "rollout.async.enabled=true", "rollout.async.max_staleness=1",
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = train_steps(tmp_path / "mr")
    assert [m["step"] for m in steps] == [1, 2, 3]
    # 16 answers in all, sampled once by the Ray worker and split over the two ranks
    assert steps[0]["completions/total_tokens"] == pytest.approx(16 * steps[0]["completions/mean_length"])
    assert (tmp_path / "mr" / "checkpoints" / "step_000003" / "ds" / "rng_rank1.pt").exists()


@pytest.mark.parametrize("address", ["ray://127.0.0.1:1", "auto"])
def test_a_ray_address_with_nothing_behind_it_is_a_clear_error_not_a_hang(tmp_path, address):
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    ray = sys.modules.get("ray")  # "auto" finds any running cluster's processes: stop one an earlier test left
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    (tmp_path / "rl.yaml").write_text("name: nowhere\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "reasoning.cli", "train", str(tmp_path / "rl.yaml"), *TINY, f"output_dir={tmp_path}",
                           "ray.enabled=true", f"ray.address={address}", "ray.connect_timeout_s=10"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "ray.address" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30 + 15  # the CLI's own start-up (imports) on top of the 30 s bound


def test_a_run_survives_losing_the_node_of_a_ray_worker_and_resumes_exactly(tmp_path, monkeypatch):
    """A 2-node Ray cluster on this machine (ray.cluster_utils.Cluster, as Ray's own tests): the node
    holding one of two workers is removed during step 2. The worker restarts on the head node, its
    lost samples are regenerated (counted), every step and the final checkpoint are complete and
    equal to a run that lost nothing; a resume to step 4 then matches an uninterrupted run."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from rollouts.workers import WorkerPool

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    original, calls = WorkerPool.sample_jobs, []

    def sample_losing_a_node(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # step 2's batch: take the second node (and the worker on it) away
            cluster.remove_node(doomed, allow_graceful=False)
            deadline = time.monotonic() + 60
            while any(n["Alive"] for n in ray.nodes() if n["NodeID"] == doomed.node_id):
                assert time.monotonic() < deadline, "Ray never noticed the node was gone"
                time.sleep(0.2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(WorkerPool, "sample_jobs", sample_losing_a_node)
    try:
        lost = config(tmp_path, "name=lost", "trainer.steps=3", "trainer.checkpoint_every=1", "ray.enabled=true",
                      "ray.address=auto", "ray.num_workers=2", "ray.placement=spread")
        result = run_rl(lost)
    finally:
        monkeypatch.setattr(WorkerPool, "sample_jobs", original)
        ray.shutdown()
        cluster.shutdown()
    steps = train_steps(lost.run_dir)
    assert [m["step"] for m in steps] == [1, 2, 3] and result["steps"] == 3
    assert steps[-1]["rollout/worker_restarts"] >= 1 and steps[-1]["rollout/regenerated_samples"] > 0
    assert json.loads((tmp_path / "lost" / "checkpoints" / "step_000003" / "trainer_state.json").read_text())[
        "step"] == 3
    straight = config(tmp_path, "name=straight", "trainer.steps=4", "trainer.checkpoint_every=1")
    run_rl(straight)
    a, b = adapter(lost.run_dir, 3), adapter(straight.run_dir, 3)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    resumed = config(tmp_path, "name=lost", "trainer.steps=4", "trainer.checkpoint_every=1", "trainer.resume=auto")
    run_rl(resumed)
    assert [m["step"] for m in train_steps(lost.run_dir)] == [1, 2, 3, 4]
    a, b = adapter(lost.run_dir, 4), adapter(straight.run_dir, 4)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
