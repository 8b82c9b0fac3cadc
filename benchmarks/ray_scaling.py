"""Ray rollout workers: sampling speed-up with 2 workers, and how small a weight sync is.

    python benchmarks/ray_scaling.py [--prompts 128] [--group-size 4]

Samples the same (prompt, sample) set with a WorkerPool of 1 and of 2 Ray workers
(1 torch thread each; 2 workers on 2 cores) from a tiny bidirectional Llama with a LoRA
adapter, and syncs the adapter once. Last output line, JSON:
  speedup_2_workers     wall(1 worker) / wall(2 workers), same trajectories (goal >= 1.7)
  sync_bytes_fraction   bytes a sync ships (LoRA state_dict) / bytes of the full model (goal <= 0.02)
plus the same fraction for other adapter placements and for a Qwen2-0.5B-shaped model
(built on the meta device, nothing downloaded), where LoRA-only sync matters most.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def model_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def lora_fraction(model: torch.nn.Module, targets: list[str] | None, rank: int = 8) -> float:
    """LoRA state_dict bytes / base model bytes for adapters on `targets` (None = peft's default)."""
    from peft import LoraConfig, get_peft_model

    from rollouts.workers import policy_weights, state_bytes

    base = model_bytes(model)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    return state_bytes(policy_weights(peft_model)) / base


def qwen_shape_fraction(targets: list[str]) -> float:
    """The same fraction for a Qwen2-0.5B-shaped model, sized on the meta device."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        base = model_bytes(model)
        lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
        adapter = sum(p.numel() * p.element_size() for n, p in lora.named_parameters() if "lora_" in n)
    return adapter / base


def timed_sample(group, prompts, group_size: int, repeats: int) -> tuple[float, list]:
    group.sample(prompts[:8], group_size=1, seed=123)  # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = group.sample(prompts, group_size=group_size, seed=0)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--gen-length", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import numpy as np
    import ray
    from peft import LoraConfig

    from reasoning.modeling import TinyModelConfig, build_char_tokenizer, build_tiny_model
    from rollouts import DecodingConfig
    from rollouts.workers import PolicySpec, WorkerPool, policy_weights

    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(), tokenizer)
    full_bytes = model_bytes(model)
    fractions = {
        "tiny_q_v": lora_fraction(build_tiny_model(TinyModelConfig(), tokenizer), None),
        "tiny_q_k_v_o": lora_fraction(build_tiny_model(TinyModelConfig(), tokenizer),
                                      ["q_proj", "k_proj", "v_proj", "o_proj"]),
        "qwen2_0.5b_shape_q_k_v_o": qwen_shape_fraction(["q_proj", "k_proj", "v_proj", "o_proj"]),
    }
    rng = np.random.default_rng(0)
    prompts = [tokenizer("sudoku " + "".join(rng.choice(list("1234."), 16)))["input_ids"] for _ in range(args.prompts)]
    decoding = DecodingConfig(gen_length=args.gen_length, temperature=1.0)

    with tempfile.TemporaryDirectory() as path:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        spec = PolicySpec(path=path, lora=LoraConfig(r=8, lora_alpha=16))  # peft's default targets: q, v
        trainer = spec.build()
        state = policy_weights(trainer.model)
        walls, outputs, sync_bytes, sync_s = {}, {}, 0, 0.0
        for workers in (1, 2):
            group = WorkerPool(spec, decoding, num_workers=workers, use_ray=True, threads=1)
            start = time.perf_counter()
            sync_bytes = group.sync(state, version=1)
            sync_s = time.perf_counter() - start
            walls[workers], outputs[workers] = timed_sample(group, prompts, args.group_size, args.repeats)
            group.shutdown()
        ray.shutdown()
    same = all(np.array_equal(a.final_tokens, b.final_tokens) for a, b in zip(outputs[1], outputs[2]))
    print(json.dumps({
        "speedup_2_workers": round(walls[1] / walls[2], 3),
        "sync_bytes_fraction": round(sync_bytes / full_bytes, 4),
        "wall_s": {f"{k}_workers": round(v, 3) for k, v in walls.items()},
        "samples": args.prompts * args.group_size, "gen_length": args.gen_length,
        "same_trajectories": same,
        "sync_bytes": sync_bytes, "model_bytes": full_bytes, "sync_s": round(sync_s, 4),
        "lora_fraction_by_placement": {k: round(v, 4) for k, v in fractions.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
