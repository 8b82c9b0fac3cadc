"""Rollout decoding speed with the block KV caches (`decoding.cache`) on long canvases.

    python benchmarks/decode_speed.py [--gen 256 --block 32 --prompt 128 --batch 8]
    python benchmarks/decode_speed.py --checkpoint train|CKPT_DIR [--task addition_trace --task-gen 128 --n 128]
    python benchmarks/decode_speed.py --family sdar [--gen 256 --prompt 128 --batch 8]

For cache none | prefix | dual × commit low_confidence | threshold (steps = gen length, so
low_confidence commits one token per step — Fast-dLLM's baseline), one batch of `--batch`
answers, greedy, timed `--repeats` times (the fastest counts):
  1. speed at gen length `--gen` after `--prompt`-token prompts (random digits), on the tiny
     built-in Llama (0.87 M parameters) with random weights — machine speed and forward tokens;
  2. with --checkpoint (a model SFT-trained on the long-canvas task; `train` = SFT with
     configs/addition_trace_tiny_sft.yaml into runs/bench/decode_speed once, ~19 min on 2 cores,
     then reused): the same on the task's own prompts at `--task-gen`, plus each mode's held-out
     accuracy on `--n` problems (the task's scorer). A trained model is confident,
     so only here does threshold decoding commit several tokens per step.
Last output line, JSON: answers_per_s.<mode>, forward_tokens.<mode> (canvas tokens computed per
answer), forward_passes.<mode>, speedup_prefix and speedup_threshold_dual (answers/s over
cache none + low_confidence), token_ratio_* (the same in forward tokens: machine-independent),
accuracy_pts.<mode> (null without a checkpoint), and `task` = part 2's figures. <mode> = <cache>+<commit>.

--family sdar: a random SDAR-architecture model (Qwen3 layers under block-causal attention, the
tiny model's sizes) at block 4 and block 32: answers/s and forward tokens of the exact block cache
(`cache: block`) vs no cache, low_confidence, steps = gen length; and the replay cost of those
trajectories (seconds and sequence positions per trajectory, with gradients off): block-wise
packing vs one row per state, the way a LLaDA-style model is replayed. JSON: by_block.<B>.{...}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from rollouts import DecodingConfig, make_policy, sample  # noqa: E402

CACHES = ("none", "prefix", "dual")
COMMITS = ("low_confidence", "threshold")
BASE = "none+low_confidence"


def random_model(args):
    """(policy, prompts): the tiny built-in model with random weights, random-digit prompts."""
    from reasoning.modeling import TinyModelConfig, build_char_tokenizer, build_tiny_model

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(TinyModelConfig(max_positions=args.prompt + args.gen + 8), tokenizer).eval()
    generator = torch.Generator().manual_seed(1)
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
    prompts = [[digits[i] for i in torch.randint(10, (args.prompt,), generator=generator).tolist()]
               for _ in range(args.batch)]
    return make_policy(model, tokenizer), prompts


def trained_model(args):
    """(policy, prompts, scorer): a checkpoint and the held-out problems of its task."""
    from reasoning.data import encode_prompt
    from reasoning.evaluate import evaluate
    from reasoning.tasks import DataConfig, get_task
    from rollouts import load_pretrained, load_tokenizer

    model, tokenizer = load_pretrained(args.checkpoint).eval(), load_tokenizer(args.checkpoint)
    policy = make_policy(model, tokenizer)
    task = get_task(args.task)
    test = task.build(DataConfig(task=args.task, test_size=args.n))["test"]

    def accuracy_pts(cfg: DecodingConfig) -> float:
        result = evaluate(policy, tokenizer, task, test, cfg, len(test), 64, seed=0, progress=False,
                          chat_template="none")
        return round(100 * result.accuracy, 1)

    return policy, [encode_prompt(tokenizer, p, "none") for p in test["prompt"]], accuracy_pts


def measure(policy, prompts, gen: int, args, accuracy_pts=None) -> dict:
    """Answers/s, forward tokens and passes (and accuracy) of every cache x commit mode."""
    answers_per_s, forward_tokens, forward_passes, accuracy = {}, {}, {}, {}
    batch = prompts[:args.batch]
    for commit in COMMITS:
        for cache in CACHES:
            mode = f"{cache}+{commit}"
            cfg = DecodingConfig(gen_length=gen, block_length=args.block, steps=gen, temperature=0.0,
                                 commit=commit, threshold=args.threshold, cache=cache)
            sample(policy, batch[:1], cfg, seeds=[0])  # warm-up
            seconds = float("inf")
            for _ in range(args.repeats):  # the best of a few: the first timed call runs slower
                started = time.perf_counter()
                trajectories = sample(policy, batch, cfg, seeds=list(range(len(batch))))
                seconds = min(seconds, time.perf_counter() - started)
            answers_per_s[mode] = round(len(trajectories) / seconds, 3)
            forward_tokens[mode] = round(sum(t.forward_tokens for t in trajectories) / len(trajectories))
            forward_passes[mode] = round(sum(t.forward_passes for t in trajectories) / len(trajectories), 1)
            accuracy[mode] = accuracy_pts(cfg) if accuracy_pts else None
            print(gen, mode, answers_per_s[mode], forward_tokens[mode], forward_passes[mode], accuracy[mode],
                  file=sys.stderr)
    return {
        "speedup_prefix": round(answers_per_s["prefix+low_confidence"] / answers_per_s[BASE], 2),
        "speedup_threshold_dual": round(answers_per_s["dual+threshold"] / answers_per_s[BASE], 2),
        "token_ratio_prefix": round(forward_tokens[BASE] / forward_tokens["prefix+low_confidence"], 2),
        "token_ratio_threshold_dual": round(forward_tokens[BASE] / forward_tokens["dual+threshold"], 2),
        "answers_per_s": answers_per_s, "forward_tokens": forward_tokens, "forward_passes": forward_passes,
        "accuracy_pts": accuracy,
    }


def block_family(args) -> dict:
    """Cached vs uncached block decoding and packed vs per-state replay on a random SDAR model."""
    from reasoning.modeling import build_char_tokenizer
    from rollouts import replay
    from rollouts.families import sdar

    tokenizer = build_char_tokenizer()
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
    generator = torch.Generator().manual_seed(1)
    prompts = [[digits[i] for i in torch.randint(10, (args.prompt,), generator=generator).tolist()]
               for _ in range(args.batch)]
    out = {}
    for block in (4, 32):
        torch.manual_seed(0)
        config = sdar.native_config({"vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 512,
                                     "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
                                     "max_position_embeddings": args.prompt + args.gen + 8, "block_length": block,
                                     "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id})
        policy = make_policy(sdar.MODEL_CLASS(config).eval(), tokenizer)
        row, trajectories = {}, None
        for cache in ("none", "block"):
            cfg = DecodingConfig(gen_length=args.gen, steps=args.gen, temperature=0.0, cache=cache)
            sample(policy, prompts[:1], cfg, seeds=[0])
            seconds = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                trajectories = sample(policy, prompts, cfg, seeds=list(range(len(prompts))))
                seconds = min(seconds, time.perf_counter() - started)
            row[f"answers_per_s.{cache}"] = round(len(prompts) / seconds, 3)
            row[f"forward_tokens.{cache}"] = round(sum(t.forward_tokens for t in trajectories) / len(trajectories))
        row["speedup_cache"] = round(row["answers_per_s.block"] / row["answers_per_s.none"], 2)
        cfg = DecodingConfig(gen_length=args.gen, steps=args.gen, temperature=0.0)
        for packed in (False, True):
            started = time.perf_counter()
            with torch.no_grad():
                replayed = replay(policy, trajectories[:2], cfg, packed=packed, micro_batch=64)
            name = "packed" if packed else "per_state"
            row[f"replay_s_per_trajectory.{name}"] = round((time.perf_counter() - started) / 2, 2)
            row[f"replay_tokens_per_trajectory.{name}"] = replayed.forward_tokens // 2
        row["replay_speedup"] = round(row["replay_s_per_trajectory.per_state"] / row["replay_s_per_trajectory.packed"], 2)
        row["steps_per_trajectory"] = round(sum(t.num_steps for t in trajectories) / len(trajectories), 1)
        print(block, row, file=sys.stderr)
        out[str(block)] = row
    return {"by_block": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per mode; the fastest counts")
    parser.add_argument("--checkpoint", help="a model trained on --task (part 2: speed and accuracy there)")
    parser.add_argument("--task", default="addition_trace")
    parser.add_argument("--task-gen", type=int, default=128, help="canvas length for the task (its SFT's)")
    parser.add_argument("--n", type=int, default=128, help="held-out problems per accuracy figure")
    parser.add_argument("--family", choices=["bidirectional", "sdar"], default="bidirectional",
                        help="sdar: the block-diffusion figures (exact cache, packed replay) instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.family == "sdar":
        result = {**block_family(args), "setup": {"gen": args.gen, "prompt": args.prompt, "batch": args.batch,
                                                  "repeats": args.repeats, "threads": args.threads},
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"}
        print(json.dumps(result))
        return
    if args.checkpoint == "train":
        from common import sft_once

        args.checkpoint = sft_once(os.path.join(ROOT, "configs", "addition_trace_tiny_sft.yaml"),
                                   os.path.join(ROOT, "runs", "bench", "decode_speed"), "addition_trace_tiny_sft")["checkpoint"]
    result = measure(*random_model(args), args.gen, args)
    if args.checkpoint:
        policy, prompts, accuracy_pts = trained_model(args)
        result["task"] = measure(policy, prompts, args.task_gen, args, accuracy_pts)
        result["accuracy_pts"] = result["task"]["accuracy_pts"]
    result["setup"] = {"gen": args.gen, "block": args.block, "prompt": args.prompt, "batch": args.batch,
                       "threshold": args.threshold, "repeats": args.repeats, "checkpoint": args.checkpoint,
                       "task": args.task if args.checkpoint else None, "task_gen": args.task_gen, "n": args.n,
                       "threads": args.threads}
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
