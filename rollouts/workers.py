"""Rollout workers: policy copies that sample trajectories, on Ray or in-process.

Each `RolloutWorker` builds its own policy from a `PolicySpec` (frozen base weights
from a directory + a LoRA adapter) and samples trajectories for its shard of
(prompt, sample) pairs. A `WorkerPool` shards a request over its workers, gathers
the results in (prompt, sample) order, and keeps the workers on the trainer's policy:
after an update only the LoRA state_dict is shipped — `ray.put` once, applied on each
worker with peft's `set_peft_model_state_dict` — and every worker reports the new
`policy_version`.

Faults lose nothing: a worker process that dies mid-sample is restarted by Ray
(`max_restarts=-1`), gets the current adapter again, and its shard is re-sampled.
Every sample carries its own seed, so the re-sampled shard is the one that was lost.
With `use_ray=False` the same worker code runs in this process (tests, debugging).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

from rollouts.families import load_pretrained, load_tokenizer
from rollouts.policy import DiffusionPolicy, make_policy
from rollouts.decoding import DecodingConfig
from rollouts.jobs import SampleJob, make_jobs, sample_jobs
from rollouts.sampler import sample_seed
from rollouts.trajectory import Trajectory

log = logging.getLogger(__name__)


@dataclass
class PolicySpec:
    """How a worker builds its policy copy: base weights + tokenizer from `path`, then LoRA."""

    path: str
    lora: object | None = None  # a peft.LoraConfig; None = sync full weights (not LoRA-only)
    shift_logits: bool | None = None  # None = the family's own
    family: str = "auto"  # see rollouts.families
    trust_remote_code: bool = False
    dtype: str = "float32"
    attention_block: int | None = None  # block-diffusion families: attention block length (None = the model's)
    device: str = "auto"  # auto: a GPU this process sees (a Ray actor: those it was given), else the CPU

    def build(self) -> DiffusionPolicy:
        model = load_pretrained(self.path, getattr(torch, self.dtype), self.family, self.trust_remote_code,
                                self.attention_block)
        model = model.to(self.resolved_device())
        if self.lora is not None:
            from peft import get_peft_model

            model = get_peft_model(model, self.lora)
        model.eval().requires_grad_(False)
        tokenizer = load_tokenizer(self.path, self.trust_remote_code)
        return make_policy(model, tokenizer, self.shift_logits)

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"


def policy_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a weight sync ships: the LoRA adapter's state_dict for a peft model, else everything."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    else:
        state = model.state_dict()
    return {name: tensor.detach().cpu().clone() for name, tensor in state.items()}


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class StaleWeights(RuntimeError):
    """A worker was asked to sample with a policy version it does not hold (e.g. after a restart)."""


class RolloutWorker:
    """One policy copy. As a Ray actor it is a process of its own with `threads` torch threads."""

    def __init__(self, spec: PolicySpec, decoding: DecodingConfig, threads: int = 1, max_batch: int = 256):
        torch.set_num_threads(threads)
        self.policy = spec.build()
        self.decoding = decoding
        self.max_batch = max_batch
        self.version = 0

    def sample(self, jobs: list[SampleJob], expected_version: int | None = None) -> list[Trajectory]:
        if expected_version is not None and expected_version != self.version:
            raise StaleWeights(f"worker holds policy_version {self.version}, asked for {expected_version}")
        return sample_jobs(self.policy, self.decoding, jobs, self.version, self.max_batch)

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        model = self.policy.model
        if hasattr(model, "peft_config"):
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(model, state)
            if result.unexpected_keys:
                raise ValueError(f"adapter keys the worker's model does not have: {result.unexpected_keys[:3]}")
        else:
            model.load_state_dict(state)
        self.version = version
        return self.version

    def policy_version(self) -> int:
        return self.version

    def log_probs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        """The worker's per-position log-probs on a canvas (to check it agrees with the trainer)."""
        with torch.no_grad():
            d, device = self.decoding, self.policy.device
            return self.policy.step_log_probs(prompt_ids.to(device), prompt_mask.to(device), answer.to(device),
                                              d.temperature, d.latent_steps, d.latent_mix).cpu()

    def pid(self) -> int:
        return os.getpid()


def connect_ray(address: str = "local", num_cpus: int | None = None, timeout_s: float = 30.0) -> None:
    """`local`: a fresh local Ray instance; `auto`: the running cluster; `ray://host:port`: a client.
    An address with nothing behind it is a clear error within `timeout_s`, not a hang."""
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        return
    if not (address == "auto" or address.startswith("ray://")):
        raise ValueError(f"ray setting 'address': expected local, auto or ray://host:port, got {address!r}")
    if address.startswith("ray://"):
        import socket

        host, _, port = address[len("ray://"):].rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"ray setting 'address': no Ray client server answers at {address} "
                                  f"({exc})") from None
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as exc:
        raise ConnectionError(f"ray setting 'address': {address!r} found no running Ray cluster "
                              f"(start one with `ray start --head`, or use address local): {exc}") from None


def check_gpus(cluster_gpus: float, num_workers: int, gpus: float) -> None:
    """Workers that ask for more GPUs than the cluster has: refused now, not at the placement timeout."""
    if gpus and cluster_gpus < gpus * num_workers:
        raise RuntimeError(f"ray setting 'gpus_per_worker': {num_workers} workers x {gpus} GPU(s) need "
                           f"{gpus * num_workers:g} GPUs; the Ray cluster has {cluster_gpus:g}")


class WorkerPool:
    """`num_workers` rollout workers that sample together and follow the trainer's weights."""

    def __init__(self, spec: PolicySpec, decoding: DecodingConfig, num_workers: int = 2, use_ray: bool = True,
                 address: str = "local", threads: int = 1, max_batch: int = 256, max_attempts: int = 3,
                 placement: str = "spread", connect_timeout_s: float = 30.0, gpus: float = 0.0):
        if num_workers < 1:
            raise ValueError(f"ray setting 'num_workers': expected >= 1, got {num_workers}")
        self.use_ray = use_ray
        self.max_attempts = max_attempts
        self.version: int | None = None  # None until the first sync: workers keep their own init
        self.worker_versions = [0] * num_workers  # what each worker holds (a failed sync leaves it behind)
        self.restarts = 0
        self.regenerated = 0  # samples re-drawn because the worker holding them was lost
        self.sync_failures = 0
        self.sync_bytes = 0
        self._weights = None  # the last synced state (an ObjectRef on Ray), re-sent after a restart
        args = (spec, decoding, threads, max_batch)
        if not use_ray:
            self.workers = [RolloutWorker(*args) for _ in range(num_workers)]
            return
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        connect_ray(address, num_cpus=max(os.cpu_count() or 1, num_workers * threads), timeout_s=connect_timeout_s)
        # one bundle per worker, over as many nodes as possible (spread) or as few (pack); a bundle on a
        # lost node is re-placed by Ray on a live one, and the actor restarts there (max_restarts=-1)
        check_gpus(ray.cluster_resources().get("GPU", 0.0), num_workers, gpus)
        bundle = {"CPU": threads, **({"GPU": gpus} if gpus else {})}
        self.placement_group = placement_group([bundle] * num_workers, strategy=placement.upper())
        try:
            ray.get(self.placement_group.ready(), timeout=max(connect_timeout_s, 60.0))
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.placement_group)
            raise RuntimeError(f"ray setting 'num_workers': the Ray cluster has no room for {num_workers} "
                               f"workers of {threads} CPU(s) each (threads_per_worker); "
                               f"free CPUs: {ray.available_resources().get('CPU', 0)}") from None
        self.workers = [
            ray.remote(RolloutWorker).options(
                num_cpus=threads, num_gpus=gpus, max_restarts=-1, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement_group, w)).remote(*args)
            for w in range(num_workers)]
        ray.get([w.policy_version.remote() for w in self.workers])  # wait until every copy is built

    # --- public surface -------------------------------------------------------------------

    def sync(self, state: dict[str, torch.Tensor], version: int, tolerate_failures: bool = False) -> int:
        """Ship new weights (LoRA-only for a peft policy) to every worker; returns bytes shipped.
        A worker that dies meanwhile is restored with these weights (see `_on_all`). A worker that
        refuses them (its load raises) fails the sync — or, with `tolerate_failures` (asynchronous
        RL, where every rollout is stamped with the version that made it), stays on its old version
        and is counted in `sync_failures`: its rollouts are then stale, never passed off as fresh."""
        if self.use_ray:
            import ray

            self._weights = ray.put(state)  # one copy in the object store, read by every worker
        else:
            self._weights = state
        self.version = version  # what a restored worker must hold from now on
        for w, result in enumerate(self._on_all("load_weights", self._weights, version, catch=tolerate_failures)):
            if isinstance(result, Exception):
                self.sync_failures += 1
                log.warning("worker %d could not load policy_version %d (%s); it stays on version %d", w, version,
                            result, self.worker_versions[w])
            elif result != version:
                raise RuntimeError(f"worker {w} reports version {result} after syncing version {version}")
            else:
                self.worker_versions[w] = version
        self.sync_bytes = state_bytes(state)
        return self.sync_bytes

    def versions(self) -> list[int]:
        return self._on_all("policy_version")

    def log_probs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, answer: torch.Tensor) -> list:
        return self._on_all("log_probs", prompt_ids, prompt_mask, answer)

    def pids(self) -> list[int]:
        return self._on_all("pid")

    def _on_all(self, method: str, *args, catch: bool = False) -> list:
        """`method` on every worker. A worker found dead (killed, OOM, node lost) is restored — Ray
        restarts it, it gets the current weights again — and asked once more; counted in `restarts`.
        `catch`: an exception the method raises is returned in that worker's place, not raised."""
        if not self.use_ray:
            out = []
            for worker in self.workers:
                try:
                    out.append(getattr(worker, method)(*args))
                except Exception as err:  # noqa: BLE001 — handed to the caller, which decides
                    if not catch:
                        raise
                    out.append(err)
            return out
        import ray
        from ray.exceptions import RayTaskError

        refs = [getattr(w, method).remote(*args) for w in self.workers]
        out = []
        for w, ref in enumerate(refs):
            for attempt in range(1, self.max_attempts + 1):
                try:
                    out.append(ray.get(ref))
                    break
                except RayTaskError as err:
                    if not catch:
                        raise
                    out.append(err.cause if isinstance(err.cause, Exception) else err)
                    break
                except _dead_actor_errors() as err:
                    if attempt == self.max_attempts:
                        raise RuntimeError(f"worker {w} kept dying during {method}; gave up after {attempt} "
                                           f"attempts") from err
                    log.warning("worker %d died during %s (%s); restoring it and retrying", w, method,
                                type(err).__name__)
                    self._restore(w)
                    ref = getattr(self.workers[w], method).remote(*args)
        return out

    def sample(self, prompts: list[list[int]], group_size: int = 1, seed: int = 0,
               pinned: list[dict[int, int] | None] | None = None) -> list[Trajectory]:
        """`group_size` trajectories per prompt, ordered (prompt 0: samples 0..G-1, prompt 1: ...)."""
        return self.sample_jobs(make_jobs(prompts, group_size, seed, pinned))

    def sample_jobs(self, jobs: list[SampleJob]) -> list[Trajectory]:
        """Sample `jobs`, split over the workers; returned in (prompt, sample) order."""
        shards = [jobs[w::len(self.workers)] for w in range(len(self.workers))]
        if self.use_ray:
            results = self._sample_on_ray(shards)
        else:
            results = [w.sample(shard, self._expected(i)) for i, (w, shard) in enumerate(zip(self.workers, shards))]
        out = [traj for shard in results for traj in shard]
        return sorted(out, key=lambda t: (t.prompt_index, t.sample_index))

    def shutdown(self) -> None:
        if self.use_ray:
            import ray

            from ray.util.placement_group import remove_placement_group

            for worker in self.workers:
                ray.kill(worker)
            if self.workers:
                remove_placement_group(self.placement_group)  # give its CPUs back to the cluster
        self.workers = []

    # --- fault handling -------------------------------------------------------------------

    def _sample_on_ray(self, shards: list[list[SampleJob]]) -> list[list[Trajectory]]:
        import ray
        from ray.exceptions import RayTaskError

        pending = {w: self.workers[w].sample.remote(shard, self._expected(w))
                   for w, shard in enumerate(shards) if shard}
        results: dict[int, list[Trajectory]] = {w: [] for w in range(len(shards))}
        attempts = {w: 1 for w in pending}
        while pending:
            ready, _ = ray.wait(list(pending.values()), num_returns=1)
            w = next(k for k, ref in pending.items() if ref == ready[0])
            try:
                results[w] = ray.get(ready[0])
                del pending[w]
                continue
            except _dead_actor_errors() as err:
                reason = f"worker {w} died ({type(err).__name__})"
            except RayTaskError as err:
                if not isinstance(err.cause, StaleWeights):
                    raise
                reason = f"worker {w} lost its weights ({err.cause})"
            if attempts[w] >= self.max_attempts:
                raise RuntimeError(f"{reason}; gave up after {attempts[w]} attempts")
            log.warning("%s; restoring it and re-sampling its shard of %d", reason, len(shards[w]))
            self._restore(w)
            self.regenerated += len(shards[w])
            attempts[w] += 1
            pending[w] = self.workers[w].sample.remote(shards[w], self._expected(w))
        return [results[w] for w in range(len(shards))]

    def _expected(self, w: int) -> int | None:
        """The version worker w must hold to sample (None before the first sync)."""
        return None if self.version is None else self.worker_versions[w]

    def _restore(self, w: int, timeout_s: float = 300.0) -> None:
        """Wait for Ray to restart worker w, then give it the current weights again."""
        import ray

        self.restarts += 1
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                call = (self.workers[w].load_weights.remote(self._weights, self.version)
                        if self._weights is not None else self.workers[w].policy_version.remote())
                ray.get(call)
                if self._weights is not None:
                    self.worker_versions[w] = self.version
                return
            except _dead_actor_errors():
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _dead_actor_errors() -> tuple[type[BaseException], ...]:
    """What Ray raises for a call to an actor that died or is restarting."""
    from ray.exceptions import ActorUnavailableError, RayActorError

    return (RayActorError, ActorUnavailableError)
