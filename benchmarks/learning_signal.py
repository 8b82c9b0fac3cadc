"""Learning from every rollout: make run's RL with and without hints (IGPO) and dynamic sampling (DAPO),
from make run's own start, at equal RL time.

    python benchmarks/learning_signal.py [--budget 300] [--seeds 0 1 2] [--variants plain hints dynamic hints+dynamic]
                                [--config configs/default.yaml] [--hard] [--set KEY=VALUE ...] [--tag NAME]

The start is make run's SFT warm start (the config's `sft` block, stopped at its accuracy target —
not a step count), trained once and reused. From it, per variant and seed, one RL run of `--budget`
seconds of training time (evaluations not counted), one at a time with the whole machine, held-out
greedy accuracy every 100 s (the config's eval_every_s):
  plain          neither hints nor dynamic sampling
  hints          rollout.hints (failed groups get reference-hinted answers), train_hints: none
  hints-entropy  the same with train_hints: entropy (make run's setting)
  dynamic        rollout.dynamic_sampling (more prompts until the batch is informative)
  hints+dynamic  both (train_hints: none)
`--set key=value ...` changes every run (e.g. a hint ratio). `--hard` also evaluates each final
checkpoint on sudoku4 puzzles with more blanks than training saw (min_blanks 11, max_blanks 14),
and the start on the same puzzles (a report, not a goal).
Last output line, JSON: by_variant.<name> = {gain_pts, gain_pts_by_seed, informative_fraction (mean over
the run's steps and seeds), all_fail_fraction, steps, curve (mean of the seeds: [{trained_s, accuracy}])};
best = {variant, gain_pts, min_seed_gain_pts}; start_accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys

from common import sft_once

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runs", "bench", "signal")
OFF = ["rollout.hints.enabled=false", "rollout.dynamic_sampling.enabled=false"]
VARIANTS = {  # each spelled out in full: make run's config itself now has hints (with entropy) on
    "plain": OFF,
    "hints": [*OFF, "rollout.hints.enabled=true", "rollout.hints.train_hints=none"],
    "hints-entropy": [*OFF, "rollout.hints.enabled=true", "rollout.hints.train_hints=entropy"],
    "dynamic": [*OFF, "rollout.dynamic_sampling.enabled=true"],
    "hints+dynamic": [*OFF, "rollout.hints.enabled=true", "rollout.hints.train_hints=none",
                      "rollout.dynamic_sampling.enabled=true"],
}
HARD = "data.task_args={min_blanks: 11, max_blanks: 14}"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def rl_run(config: str, name: str, checkpoint: str, budget: float, seed: int, overrides: list[str]) -> dict:
    shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
    with open(os.path.join(OUT, f"{name}.log"), "w") as log:
        subprocess.run([sys.executable, "-m", "reasoning.cli", "train", config, f"output_dir={OUT}", f"name={name}",
                        f"model.path={checkpoint}", "trainer.sft_warm_start=false", f"trainer.max_seconds={budget}",
                        "trainer.checkpoint_every=0", "trainer.save_rollouts_every=0", f"seed={seed}",
                        "logging.progress=false", "overwrite=true", *overrides],
                       check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return read_run(name)


def read_run(name: str) -> dict:
    """A finished run's summary.json, with its informative fraction, all-fail fraction and curve."""
    with open(os.path.join(OUT, name, "summary.json")) as fh:
        summary = json.load(fh)
    with open(os.path.join(OUT, name, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    steps = [r for r in rows if "train/informative_fraction" in r]
    summary["informative_fraction"] = mean([r["train/informative_fraction"] for r in steps])
    summary["all_fail_fraction"] = mean([r["train/all_fail_fraction"] for r in steps])
    acc_key = next(k for k in summary if k.startswith("eval/") and k.endswith("/acc"))
    summary["curve"] = [{"trained_s": round(r["timing_s/trained"], 1), "accuracy": evals[acc_key]}
                        for r, evals in zip([r for r in rows if "timing_s/trained" in r],
                                            [r for r in rows if acc_key in r][1:])]
    return summary


def hard_accuracy(checkpoint: str, name: str) -> float:
    """Held-out accuracy of `checkpoint` on puzzles with 11-14 blanks (training saw 4-10)."""
    out = os.path.join(OUT, "hard", name)
    subprocess.run([sys.executable, "-m", "reasoning.cli", "eval", checkpoint, "--output", out, HARD, "eval.n=512"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(out, "eval.json")) as fh:
        return json.load(fh)["accuracy"]


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    length = min(len(c) for c in curves)
    return [{"trained_s": round(mean([c[i]["trained_s"] for c in curves]), 1),
             "accuracy": round(mean([c[i]["accuracy"] for c in curves]), 4)} for i in range(length)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=300.0, help="RL training seconds per run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.yaml"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--hard", action="store_true", help="also evaluate on sudoku4 with 11-14 blanks")
    parser.add_argument("--tag", default="", help="added to the run names (keeps runs with --set apart)")
    args = parser.parse_args()
    config = os.path.abspath(args.config)
    os.makedirs(OUT, exist_ok=True)
    stem = os.path.splitext(os.path.basename(config))[0]
    start = sft_once(config, OUT, f"sft_start_{stem}" if stem != "default" else "sft_start")
    checkpoint = start["checkpoint"]
    by_variant, hard = {}, {}
    for variant in args.variants:
        runs = []
        for seed in args.seeds:
            name = f"{stem}{'_' + args.tag if args.tag else ''}_{variant.replace('+', '_')}_s{seed}"
            runs.append(rl_run(config, name, checkpoint, args.budget, seed, [*VARIANTS[variant], *args.set]))
            if args.hard:
                final = os.path.join(OUT, name, "checkpoints", f"step_{runs[-1]['steps']:06d}")
                hard.setdefault(variant, []).append(hard_accuracy(final, name))
            print(variant, seed, json.dumps({k: runs[-1][k] for k in ("steps", "before", "after", "gain_pts",
                                                                        "informative_fraction")}), file=sys.stderr)
        gains = [r["gain_pts"] for r in runs]
        by_variant[variant] = {"gain_pts": round(mean(gains), 1), "gain_pts_by_seed": gains,
                               "informative_fraction": round(mean([r["informative_fraction"] for r in runs]), 3),
                               "all_fail_fraction": round(mean([r["all_fail_fraction"] for r in runs]), 3),
                               "steps": [r["steps"] for r in runs], "after_by_seed": [r["after"] for r in runs],
                               "curve": mean_curve([r["curve"] for r in runs])}
        if variant in hard:
            by_variant[variant]["hard_accuracy_by_seed"] = hard[variant]
    best = max(by_variant, key=lambda v: by_variant[v]["gain_pts"])
    result = {"by_variant": by_variant,
              "best": {"variant": best, "gain_pts": by_variant[best]["gain_pts"],
                       "min_seed_gain_pts": min(by_variant[best]["gain_pts_by_seed"])},
              "start_accuracy": runs[0]["before"], "sft_steps": start.get("steps"),
              "budget_s": args.budget, "seeds": args.seeds, "config": os.path.relpath(config, ROOT),
              "overrides": args.set, "tag": args.tag, "machine": f"{platform.machine()}, {os.cpu_count()} cores, one run at a time"}
    if args.hard:
        result["start_hard_accuracy"] = hard_accuracy(checkpoint, "start")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
