"""Does a trajectory policy-gradient step raise reward — on the prompts it trained on, and held out?

    python benchmarks/pg_step.py [--checkpoint DIR] [--optimizer sgd|adamw|lora_adamw] [--lr X]
                                 [--updates 6] [--temperature 1.0] [--decode-steps 10] [--split grid|puzzle]

A diagnostic for "RL is not learning": it separates "the gradient points the wrong way"
from "what it learns does not transfer". From an SFT checkpoint it takes P fixed training
prompts, and for `--updates` rounds samples G answers each (the rollout decoding), scores
them with the task's reward, and takes one optimizer step on the trajectory objective
(group-normalised advantages, exact replay, gradient clipped to norm 1). Before and after,
with common random numbers (the same sampling seeds):
  train_reward    mean reward of G sampled answers on the P training prompts (what RL optimises)
  heldout_reward  mean reward of one sampled answer on N held-out problems
  heldout_greedy  held-out greedy accuracy (what `make run` reports)
Last output line, JSON with the three before/after pairs and the settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import rewards  # noqa: E402
from reasoning.advantages import group_advantages  # noqa: E402
from reasoning.checkpoint import load_checkpoint  # noqa: E402
from reasoning.data import decode_completion, encode_prompt  # noqa: E402
from reasoning.engine import make_optimizer  # noqa: E402
from reasoning.evaluate import evaluate  # noqa: E402
from reasoning.modeling import LoraConfig, apply_lora  # noqa: E402
from reasoning.objectives import RolloutBatch, build_objective  # noqa: E402
from reasoning.tasks import DataConfig, get_task  # noqa: E402
from rollouts import DecodingConfig, make_policy, sample  # noqa: E402


def mean_reward(model, tokenizer, task, rows, decoding: DecodingConfig, samples: int, seed: int):
    """Mean task reward of `samples` answers per row (seeds fixed by `seed`), and the trajectories."""
    prompts = [encode_prompt(tokenizer, p) for p in rows["prompt"] for _ in range(samples)]
    with torch.no_grad():
        trajectories = sample(make_policy(model.eval(), tokenizer), prompts, decoding,
                              seeds=[seed * 1_000_003 + i for i in range(len(prompts))])
    columns = {c: [v for v in rows[c] for _ in range(samples)] for c in rows.column_names if c != "prompt"}
    scores = rewards.call_reward(rewards.get(task.reward), [p for p in rows["prompt"] for _ in range(samples)],
                                 [decode_completion(tokenizer, t.final_tokens) for t in trajectories], None, columns)
    scores = [0.0 if s is None else float(s) for s in scores]
    return sum(scores) / len(scores), scores, trajectories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=os.path.join(ROOT, "runs/bench/sudoku4_sft_250/checkpoints/step_000250"))
    parser.add_argument("--task", default="sudoku4")
    parser.add_argument("--split", default="grid", help="sudoku4 only: grid (default) or puzzle")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw", "lora_adamw"])
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--updates", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--heldout", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--decode-steps", type=int, default=10)
    parser.add_argument("--gen-length", type=int, default=20)
    parser.add_argument("--merge-steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not os.path.isdir(args.checkpoint):
        sys.exit(f"--checkpoint: '{args.checkpoint}' is not a directory (train one with "
                 f"`python benchmarks/objectives.py --cost-only` or `dlmrl sft`)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.perf_counter()

    task = get_task(args.task)
    task_args = {"split_by": args.split} if args.task == "sudoku4" else {}
    data = task.build(DataConfig(task=args.task, train_size=args.prompts, test_size=args.heldout, task_args=task_args))
    train, test = data["train"], data["test"]
    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    if args.optimizer == "lora_adamw":
        model = apply_lora(model, LoraConfig(enabled=True))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, "sgd" if args.optimizer == "sgd" else "adamw", args.lr)
    rollout = DecodingConfig(gen_length=args.gen_length, steps=args.decode_steps, temperature=args.temperature)
    greedy = dataclasses.replace(rollout, steps=args.gen_length, temperature=0.0)
    objective = build_objective("trajectory", merge_steps=args.merge_steps)

    def measure() -> dict:
        return {"train_reward": mean_reward(model, tokenizer, task, train, rollout, args.group, seed=101)[0],
                "heldout_reward": mean_reward(model, tokenizer, task, test, rollout, 1, seed=202)[0],
                "heldout_greedy": evaluate(make_policy(model.eval(), tokenizer), tokenizer, task, test, greedy,
                                           n=len(test), batch_size=256, seed=0).accuracy}

    before = measure()
    print(f"before: {before}", file=sys.stderr)
    for update in range(args.updates):
        _, scores, trajectories = mean_reward(model, tokenizer, task, train, rollout, args.group, seed=update)
        advantages = group_advantages(scores, args.group)
        kept = [i for i in range(len(trajectories)) if advantages.keep[i]]
        if not kept:
            continue
        batch = RolloutBatch([trajectories[i] for i in kept], advantages.values[kept], rollout)
        policy = make_policy(model.eval(), tokenizer)
        prep = objective.prepare(policy, batch, torch.Generator().manual_seed(update))
        loss, _ = objective.loss(policy, batch, prep, list(range(len(kept))), objective.units(batch, prep))
        optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        print(f"update {update + 1}: batch reward {sum(scores) / len(scores):.3f}, kept {len(kept)}, "
              f"grad norm {grad_norm:.2f}", file=sys.stderr)
    after = measure()
    print(json.dumps({
        **{f"{key}_before": round(value, 4) for key, value in before.items()},
        **{f"{key}_after": round(value, 4) for key, value in after.items()},
        "checkpoint": os.path.relpath(args.checkpoint, ROOT), "task": args.task, "split": args.split,
        "optimizer": args.optimizer, "lr": args.lr, "updates": args.updates, "prompts": args.prompts,
        "group": args.group, "heldout_n": args.heldout, "temperature": args.temperature,
        "decode_steps": args.decode_steps, "merge_steps": args.merge_steps,
        "seconds": round(time.perf_counter() - started, 1), "threads": args.threads, "machine": platform.node()}))


if __name__ == "__main__":
    main()
