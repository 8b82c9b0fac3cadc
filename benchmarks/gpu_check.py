"""The GPU path in one short run: full-size LLaDA-8B, SDAR-8B and LLaDA2.0-mini with random weights.

    python benchmarks/gpu_check.py [--kinds llada sdar llada2] [--gen 256] [--batch 8] [--no-zero2]

Nothing is downloaded: each model is built from its upstream manifest (tests/fixtures/*/
*.manifest.json) on the meta device first, its parameter count checked against the manifest, then
built again on the GPU in bf16 with the family's random initialisation. Per model it reports
  sampler            answers/s at --gen for each cache mode the family takes, and with threshold
                     decoding (commit: threshold, 0.9), --batch random prompts of --prompt tokens
  rl_step            one LoRA (r 16, q/k/v/o) RL step per objective (trajectory, mean_field) with
                     gradient checkpointing: seconds and peak GPU memory, next to
                     benchmarks/memory.py's prediction for the same shapes
  replay             bf16 replay of the sampled answers against their behaviour log-probs (max |Δ|)
and once, on the first model, one ZeRO-2 DeepSpeed step of the LoRA model (configs/deepspeed/zero2.json).
Random weights make the answers meaningless; the speed, memory and exactness are what is checked.
Sized to finish in under 8 minutes on one 80 GB GPU. On a machine without CUDA it refuses with one
line and exit status 2 (`--device cpu --shrink` runs the same path on tiny configs, for the tests).
Last line: JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from rollouts.families import FAMILIES  # noqa: E402

MANIFESTS = {"llada": "realarch/llada-8b-instruct.manifest.json", "sdar": "blockarch/sdar-8b-chat.manifest.json",
             "llada2": "blockarch/llada2.0-mini.manifest.json"}
CACHES = {"llada": ["none", "prefix", "dual"], "sdar": ["none", "block"], "llada2": ["none", "block"]}
SHRUNK = {"llada": {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128},
          "sdar": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                   "intermediate_size": 128, "head_dim": 16},
          "llada2": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
                     "intermediate_size": 128, "moe_intermediate_size": 32, "head_dim": 16, "num_experts": 4,
                     "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1}}


def manifest(kind: str) -> dict:
    with open(os.path.join(ROOT, "tests", "fixtures", MANIFESTS[kind])) as fh:
        return json.load(fh)


def upstream_config(kind: str, shrink: bool) -> dict:
    config = dict(manifest(kind)["config"])
    if shrink:
        config.update(SHRUNK[kind], vocab_size=512, pad_token_id=0, eos_token_id=1, bos_token_id=2, mask_token_id=511,
                      **({"embedding_size": 512} if kind == "llada" else {}))
    return config


def meta_parameters(kind: str, shrink: bool = False) -> int:
    """Parameters of the native model built on the meta device (no memory): the manifest's count at full size."""
    family = FAMILIES[kind]
    with torch.device("meta"):
        model = family.MODEL_CLASS(family.native_config(upstream_config(kind, shrink)))
    return sum(p.numel() for p in model.parameters())


class SpecialIds:
    """The ids a policy needs, from the config (a random-weight model has no tokenizer): the mask id
    where the config names one, else the last id of the vocabulary."""

    def __init__(self, config):
        vocab = int(config.vocab_size)
        self.mask_token_id = getattr(config, "mask_token_id", None) or vocab - 1
        self.eos_token_id = getattr(config, "eos_token_id", None) or 0
        if self.eos_token_id >= vocab or self.mask_token_id >= vocab:
            self.mask_token_id, self.eos_token_id = vocab - 1, 0
        self.pad_token_id = getattr(config, "pad_token_id", None)
        if self.pad_token_id is None or self.pad_token_id >= vocab:
            self.pad_token_id = self.eos_token_id


def build(kind: str, device: str, shrink: bool):
    family = FAMILIES[kind]
    config = family.native_config(upstream_config(kind, shrink))
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = family.MODEL_CLASS(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval(), SpecialIds(config)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if device.startswith("cuda") else None


def prompts_for(ids: SpecialIds, vocab: int, batch: int, length: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(1)
    banned = {ids.mask_token_id, ids.eos_token_id, ids.pad_token_id}
    rows = torch.randint(1, vocab - 1, (batch, length), generator=generator).tolist()
    return [[t if t not in banned else 1 for t in row] for row in rows]


def decoding_for(kind: str, policy, gen: int, cache: str, threshold: bool, temperature: float = 0.0):
    from rollouts import DecodingConfig

    block = min(policy.attention_block or 32, gen)
    return DecodingConfig(gen_length=gen, block_length=block, steps=gen // 2, cache=cache, temperature=temperature,
                          commit="threshold" if threshold else "low_confidence")


def sampler_speed(kind: str, policy, prompts, gen: int, device: str) -> dict:
    from rollouts import sample

    out = {}
    for cache in CACHES[kind]:
        for threshold in (False, True):
            cfg = decoding_for(kind, policy, gen, cache, threshold)
            synchronize(device)
            start = time.perf_counter()
            with torch.no_grad():
                sample(policy, prompts, cfg, seeds=list(range(len(prompts))))
            synchronize(device)
            out[f"{cache}{'+threshold' if threshold else ''}_answers_per_s"] = round(
                len(prompts) / (time.perf_counter() - start), 3)
    return out


def rl_steps(kind: str, model, ids, prompts, gen: int, device: str, shrink: bool) -> tuple[dict, object]:
    """One LoRA step per objective on 4 sampled answers (advantages +1/-1), and the bf16 replay check."""
    from reasoning.modeling import LoraConfig, apply_lora, enable_gradient_checkpointing
    from reasoning.objectives import StepBatch, build_objective
    from rollouts import make_policy, replay, sample

    model = apply_lora(model, LoraConfig(enabled=True, r=16, alpha=32), kind)
    enable_gradient_checkpointing(model)
    policy = make_policy(model, ids)
    cfg = decoding_for(kind, policy, gen, "none", False, temperature=1.0)
    with torch.no_grad():
        trajectories = sample(policy, prompts[:4], cfg, seeds=[10, 11, 12, 13])
    commits = [t.commits for t in trajectories]
    with torch.no_grad():
        replayed = replay(policy, trajectories, cfg)
    gap = max(float((r.float().cpu() - torch.as_tensor(t.event_logp[c])).abs().max())
              for r, t, c in zip(replayed.token_logp, trajectories, commits))
    out = {"replay_max_abs_diff": round(gap, 5)}
    batch = StepBatch(trajectories, torch.tensor([1.0, -1.0, 1.0, -1.0]), cfg, stop=policy.ids.stop)
    for name in ("trajectory", "mean_field"):
        objective = build_objective(name)
        model.train()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        synchronize(device)
        start = time.perf_counter()
        prep = objective.prepare(policy, batch, torch.Generator().manual_seed(0))
        loss, _ = objective.loss(policy, batch, prep, list(range(4)), objective.units(batch, prep))
        loss.backward()
        synchronize(device)
        out[f"{name}_step_s"] = round(time.perf_counter() - start, 2)
        out[f"{name}_peak_gib"] = peak_gib(device)
        model.zero_grad(set_to_none=True)
    if not shrink:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from memory import measure

        row = measure(kind, len(prompts[0]), gen, 16)
        out["predicted_gib_per_answer"] = round(row["weights_gib"] + row["lora_train_gib"] + row["activations_ckpt_gib"], 2)
    return out, (model, policy, batch)


def zero2_step(model, policy, batch) -> dict:
    from reasoning.engine import build_engine
    from reasoning.objectives import build_objective

    engine, _ = build_engine(model, os.path.join(ROOT, "configs", "deepspeed", "zero2.json"), lr=1e-5)
    objective = build_objective("trajectory")
    start = time.perf_counter()
    prep = objective.prepare(policy, batch, torch.Generator().manual_seed(0))
    loss, _ = objective.loss(policy, batch, prep, list(range(len(batch.trajectories))), objective.units(batch, prep))
    engine.backward(loss)
    engine.step()
    return {"zero2_step_s": round(time.perf_counter() - start, 2), "zero2_loss": round(float(loss), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(MANIFESTS), choices=list(MANIFESTS))
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--no-zero2", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shrink", action="store_true", help="tiny configs (a CPU check of the path)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine",
              file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "gen_length": args.gen, "prompt_tokens": args.prompt, "batch": args.batch, "shrunk": args.shrink}
    from rollouts import make_policy

    for index, kind in enumerate(args.kinds):
        row = {"parameters": meta_parameters(kind, args.shrink)}
        if not args.shrink and row["parameters"] != manifest(kind)["parameters"]:
            raise SystemExit(f"gpu_check: {kind} built with {row['parameters']} parameters, the manifest has "
                             f"{manifest(kind)['parameters']}")
        start = time.perf_counter()
        model, ids = build(kind, args.device, args.shrink)
        row["build_s"] = round(time.perf_counter() - start, 1)
        policy = make_policy(model, ids)
        prompts = prompts_for(ids, int(model.config.vocab_size), args.batch, args.prompt)
        row["sampler"] = sampler_speed(kind, policy, prompts, args.gen, args.device)
        steps, (lora_model, lora_policy, batch) = rl_steps(kind, model, ids, prompts, args.gen, args.device, args.shrink)
        row["rl_step"] = steps
        if index == 0 and not args.no_zero2:
            row["zero2"] = zero2_step(lora_model, lora_policy, batch)
        report[kind] = row
        print(json.dumps({kind: row}), file=sys.stderr)
        del model, lora_model, policy, lora_policy
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
