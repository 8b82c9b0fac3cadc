"""Decoding policies on SFT checkpoints: accuracy, forwards per answer, sampler overhead.

    python benchmarks/sampler.py                       # trains the checkpoints if missing
    python benchmarks/sampler.py --sudoku4 RUN_DIR --countdown RUN_DIR

For each task it decodes the held-out split (`--n` problems) with every decoding
policy below and reports accuracy (the task's reward scorer) and forward passes per
answer. Last output line, JSON:
  overhead_ratio          sampler wall time / the same forward calls made bare (goal <= 1.10)
  tasks.<task>.<policy>   {"accuracy", "forwards_per_answer"}
  threshold_forward_ratio per task: forwards of fixed-step decoding (steps = gen_length)
                          / forwards of the best threshold policy within 1 pt of its
                          accuracy (goal >= 4), with the threshold used.
Checkpoints: `runs/bench/<task>_tiny_sft` (the shipped SFT configs with
`sft.corrupt_prob=0.1`, so revision has meaningful confidences); trained first if absent.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def policies(length: int) -> dict[str, dict]:
    """Decoding settings to compare (overrides of the checkpoint's rollout block)."""
    out = {
        "low_confidence": dict(steps=length),
        "low_confidence_half_steps": dict(steps=length // 2),
        "random": dict(steps=length, commit="random"),
        "margin": dict(steps=length, confidence="margin"),
        "entropy": dict(steps=length, confidence="entropy"),
        "stochastic_selection": dict(steps=length, selection_temperature=0.05),
        "revision": dict(steps=length, remask="running_confidence", remask_threshold=0.9, remask_budget=8),
        "latent_thinking": dict(steps=length, latent_steps=1, latent_mix=0.5),
    }
    for tau in THRESHOLDS:
        out[f"threshold_{tau}"] = dict(steps=length, commit="threshold", threshold=tau)
    return out


def ensure_checkpoint(task: str, run_dir: str | None) -> str:
    """The newest checkpoint of `run_dir`, training the shipped SFT config there first if needed."""
    from reasoning.config import load_config
    from reasoning.sft import run_sft

    run_dir = run_dir or os.path.join(ROOT, "runs", "bench", f"{task}_tiny_sft")
    found = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step_*")))
    if not found:
        print(f"training {task} SFT into {run_dir} ...", file=sys.stderr)
        cfg = load_config(os.path.join(ROOT, "configs", f"{task}_tiny_sft.yaml"),
                          [f"output_dir={os.path.dirname(run_dir)}", f"name={os.path.basename(run_dir)}",
                           "sft.corrupt_prob=0.1", "logging.progress=false"])
        run_sft(cfg)
        found = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step_*")))
    return found[-1]


def measure_overhead(policy, prompts: list[list[int]], decoding, batch_size: int) -> dict:
    """Time the sampler, then the exact same sequence of model calls without the sampler around them."""
    from rollouts import sample

    shapes = []
    logits = policy.logits

    def recording(*, attention_mask, input_ids=None, inputs_embeds=None, keep=None):
        shapes.append((tuple(attention_mask.shape), keep))
        return logits(attention_mask=attention_mask, input_ids=input_ids, inputs_embeds=inputs_embeds, keep=keep)

    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    sample(policy, batches[0], decoding, seeds=list(range(len(batches[0]))))  # warm-up
    policy.logits = recording
    start = time.perf_counter()
    for batch in batches:
        sample(policy, batch, decoding, seeds=list(range(len(batch))))
    sampler_s = time.perf_counter() - start
    policy.logits = logits
    calls = [(torch.randint(3, 50, shape), torch.ones(shape, dtype=torch.long), keep) for shape, keep in shapes]
    start = time.perf_counter()
    with torch.no_grad():
        for ids, mask, keep in calls:
            policy.logits(attention_mask=mask, input_ids=ids, keep=keep)
    bare_s = time.perf_counter() - start
    return {"sampler_s": round(sampler_s, 3), "bare_forwards_s": round(bare_s, 3), "forward_calls": len(shapes),
            "overhead_ratio": round(sampler_s / bare_s, 3)}


def bench_task(task_name: str, checkpoint: str, n: int, batch_size: int) -> tuple[dict, dict]:
    from reasoning.checkpoint import load_checkpoint
    from reasoning.config import load_config
    from reasoning.data import encode_prompt
    from reasoning.evaluate import evaluate
    from reasoning.tasks import get_task
    from rollouts import make_policy

    run_dir = os.path.dirname(os.path.dirname(checkpoint))
    cfg = load_config(os.path.join(run_dir, "config.yaml"), saved_by_run=True)
    task = get_task(cfg.data.task)
    test = task.build(dataclasses.replace(cfg.data, train_size=0))["test"]
    model, tokenizer, _ = load_checkpoint(checkpoint)
    policy = make_policy(model.eval(), tokenizer)
    results = {}
    for name, overrides in policies(cfg.rollout.gen_length).items():
        decoding = cfg.rollout_decoding(**overrides)
        with torch.no_grad():
            res = evaluate(policy, tokenizer, task, test, decoding, n=n, batch_size=batch_size)
        results[name] = {"accuracy": round(res.accuracy, 4), "forwards_per_answer": round(res.mean_steps, 2)}
        print(task_name, name, results[name], file=sys.stderr)
    reference = results["low_confidence"]
    within = [(reference["forwards_per_answer"] / results[f"threshold_{tau}"]["forwards_per_answer"], tau)
              for tau in THRESHOLDS if results[f"threshold_{tau}"]["accuracy"] >= reference["accuracy"] - 0.01]
    ratio, tau = max(within) if within else (None, None)
    threshold = {"ratio": None if ratio is None else round(ratio, 2), "threshold": tau}
    prompts = [encode_prompt(tokenizer, p) for p in test.select(range(min(n, len(test))))["prompt"]]
    overhead = measure_overhead(policy, prompts, cfg.rollout_decoding(steps=cfg.rollout.gen_length),
                                batch_size)
    return {"policies": results, "threshold": threshold, "checkpoint": checkpoint}, overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sudoku4", help="SFT run dir (default runs/bench/sudoku4_tiny_sft)")
    parser.add_argument("--countdown", help="SFT run dir (default runs/bench/countdown_tiny_sft)")
    parser.add_argument("--n", type=int, default=512, help="held-out problems per policy")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tasks, overheads = {}, {}
    for task in ("sudoku4", "countdown"):
        checkpoint = ensure_checkpoint(task, getattr(args, task))
        tasks[task], overheads[task] = bench_task(task, checkpoint, args.n, args.batch_size)
    print(json.dumps({
        "overhead_ratio": max(o["overhead_ratio"] for o in overheads.values()),
        "overhead": overheads,
        "threshold_forward_ratio": {t: r["threshold"] for t, r in tasks.items()},
        "tasks": {t: r["policies"] for t, r in tasks.items()},
        "n": args.n, "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
