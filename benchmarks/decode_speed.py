"""Rollout decoding speed with the block KV caches (`decoding.cache`) on long canvases.

    python benchmarks/decode_speed.py [--gen 256 --block 32 --prompt 128 --batch 8]
    python benchmarks/decode_speed.py --checkpoint CKPT_DIR --task TASK [--n 64]   # + accuracy

For cache none | prefix | dual × commit low_confidence | threshold (steps = gen length, so
low_confidence commits one token per step — Fast-dLLM's baseline), one batch of `--batch`
answers after `--prompt`-token prompts, greedy. Without --checkpoint the model is the tiny
built-in Llama (0.87 M parameters) with random weights: speed and forward tokens only (an
untrained model is never confident, so threshold commits ~1 token per step there). With
--checkpoint and --task, held-out accuracy of each mode on `--n` problems is added (the task's
own prompts then set the prompt length).
Last output line, JSON: answers_per_s.<mode>, forward_tokens.<mode> (canvas tokens computed per
answer), forward_passes.<mode>, speedup_prefix and speedup_threshold_dual (answers/s over
cache none + low_confidence), token_ratio_* (the same as forward tokens: machine-independent),
accuracy_pts.<mode> (null without a checkpoint). <mode> = <cache>+<commit>.
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


def load(args):
    """(policy, tokenizer, prompts, task rows or None)."""
    from reasoning.modeling import TinyModelConfig, build_char_tokenizer, build_tiny_model
    from rollouts import load_pretrained, load_tokenizer

    if args.checkpoint:
        model, tokenizer = load_pretrained(args.checkpoint).eval(), load_tokenizer(args.checkpoint)
    else:
        torch.manual_seed(0)
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(TinyModelConfig(max_positions=args.prompt + args.gen + 8), tokenizer).eval()
    policy = make_policy(model, tokenizer)
    if args.task:
        from reasoning.data import encode_prompt
        from reasoning.tasks import DataConfig, get_task

        task = get_task(args.task)
        test = task.build(DataConfig(task=args.task, test_size=args.n))["test"]
        return policy, tokenizer, [encode_prompt(tokenizer, p, "none") for p in test["prompt"]], (task, test)
    generator = torch.Generator().manual_seed(1)
    digits = tokenizer.convert_tokens_to_ids(list("0123456789"))
    prompts = [[digits[i] for i in torch.randint(10, (args.prompt,), generator=generator).tolist()]
               for _ in range(args.batch)]
    return policy, tokenizer, prompts, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gen", type=int, default=256)
    parser.add_argument("--block", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--checkpoint")
    parser.add_argument("--task")
    parser.add_argument("--n", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy, tokenizer, prompts, task = load(args)
    answers_per_s, forward_tokens, forward_passes, accuracy = {}, {}, {}, {}
    for commit in COMMITS:
        for cache in CACHES:
            mode = f"{cache}+{commit}"
            cfg = DecodingConfig(gen_length=args.gen, block_length=args.block, steps=args.gen, temperature=0.0,
                                 commit=commit, threshold=args.threshold, cache=cache)
            sample(policy, prompts[:1], cfg, seeds=[0])  # warm-up
            started = time.perf_counter()
            trajectories = sample(policy, prompts[:args.batch], cfg, seeds=list(range(len(prompts[:args.batch]))))
            seconds = time.perf_counter() - started
            answers_per_s[mode] = round(len(trajectories) / seconds, 3)
            forward_tokens[mode] = round(sum(t.forward_tokens for t in trajectories) / len(trajectories))
            forward_passes[mode] = round(sum(t.forward_passes for t in trajectories) / len(trajectories), 1)
            accuracy[mode] = score(task, policy, tokenizer, prompts, cfg) if task else None
            print(mode, answers_per_s[mode], forward_tokens[mode], forward_passes[mode], accuracy[mode],
                  file=sys.stderr)
    base = "none+low_confidence"
    print(json.dumps({
        "speedup_prefix": round(answers_per_s["prefix+low_confidence"] / answers_per_s[base], 2),
        "speedup_threshold_dual": round(answers_per_s["dual+threshold"] / answers_per_s[base], 2),
        "token_ratio_prefix": round(forward_tokens[base] / forward_tokens["prefix+low_confidence"], 2),
        "token_ratio_threshold_dual": round(forward_tokens[base] / forward_tokens["dual+threshold"], 2),
        "answers_per_s": answers_per_s, "forward_tokens": forward_tokens, "forward_passes": forward_passes,
        "accuracy_pts": accuracy,
        "setup": {"gen": args.gen, "block": args.block, "prompt": args.prompt if not task else "task",
                  "batch": args.batch, "threshold": args.threshold, "checkpoint": args.checkpoint,
                  "task": args.task, "threads": args.threads},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)",
    }))


def score(task, policy, tokenizer, prompts, cfg) -> float:
    """Held-out accuracy (points) of a decoding mode with the task's own scorer."""
    from reasoning.evaluate import evaluate

    (task_obj, test) = task
    result = evaluate(policy, tokenizer, task_obj, test, cfg, len(test), 64, seed=0, progress=False,
                      chat_template="none")
    return round(100 * result.accuracy, 1)


if __name__ == "__main__":
    main()
