"""Credit where it is earned: make run's RL with step-level credit variants, from make run's own start,
at equal RL time (issue "Credit where it is earned").

    python benchmarks/credit.py [--budget 300] [--seeds 0 1 2] [--variants ...]
                                [--configs configs/default.yaml configs/countdown.yaml] [--set KEY=VALUE ...]
                                [--reuse]   # read runs finished by an earlier invocation

Per config, the start is that config's SFT warm start (stopped at its accuracy target), trained once
and reused (benchmarks/learning_signal.py's runs and start). From it, per variant and seed, one RL run
of `--budget` seconds of training time, one at a time with the whole machine:
  plain               neither hints nor dynamic sampling
  hints-entropy       rollout.hints with train_hints: entropy (make run's shipped setting)
  branching           rollout.branching (each of the G paths continued once more from its middle
                      canvas; step-level advantages from the tree)
  branching+hints     both
  intermediate        rewards.intermediate at steps 2, 4, 6, 8 (EGSPO-SA's step value, λ 0.5)
  temporal            the task's reward plus temporal_consistency (TCR), weight 1 each
Last output line, JSON in learning_signal.py's shape, one block per config:
by_config.<config>.by_variant.<name> = {gain_pts, gain_pts_by_seed, informative_fraction, steps,
extra_forwards_per_answer, curve}; best = {variant, gain_pts, min_seed_gain_pts}; start_accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from common import sft_once
from learning_signal import OFF, OUT, ROOT, mean, mean_curve, read_run, rl_run

HINTS = ["rollout.hints.enabled=true", "rollout.hints.train_hints=entropy"]
BRANCH = ["rollout.branching.enabled=true"]
VARIANTS = {
    "plain": OFF,
    "hints-entropy": [*OFF, *HINTS],
    "branching": [*OFF, *BRANCH],
    "branching+hints": [*OFF, *HINTS, *BRANCH],
    "intermediate": [*OFF, "rewards.intermediate.at=[2, 4, 6, 8]"],
    "temporal": [*OFF, "rollout.record_predictions=true"],  # + the rewards, per task (below)
}
TASK_REWARD = {"default": "sudoku4", "countdown": "countdown"}


def variant_overrides(variant: str, stem: str) -> list[str]:
    extra = VARIANTS[variant]
    if variant == "temporal":
        extra = [*extra, f"rewards=[{{name: {TASK_REWARD[stem]}}}, {{name: temporal_consistency}}]"]
    return extra


def extra_forwards(run_dir: str) -> float:
    """Mean over the run's steps of the branching sampler forwards per answer (0 without branches)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return mean([r.get("branch/extra_forwards_per_answer", 0.0) for r in rows if "reward" in r])


def bench_config(config: str, variants: list[str], seeds: list[int], budget: float, sets: list[str],
                 reuse: bool = False) -> dict:
    stem = os.path.splitext(os.path.basename(config))[0]
    start = sft_once(config, OUT, f"sft_start_{stem}" if stem != "default" else "sft_start")
    by_variant = {}
    for variant in variants:
        runs = []
        for seed in seeds:
            name = f"credit_{stem}_{variant.replace('+', '_')}_s{seed}"
            if reuse and os.path.isfile(os.path.join(OUT, name, "summary.json")):
                runs.append(read_run(name))  # a finished run of an earlier invocation
            else:
                runs.append(rl_run(config, name, start["checkpoint"], budget, seed,
                                   [*variant_overrides(variant, stem), *sets]))
            runs[-1]["extra_forwards_per_answer"] = extra_forwards(os.path.join(OUT, name))
            print(stem, variant, seed, json.dumps({k: runs[-1][k] for k in ("steps", "before", "after", "gain_pts",
                                                                             "extra_forwards_per_answer")}),
                  file=sys.stderr, flush=True)
        gains = [r["gain_pts"] for r in runs]
        by_variant[variant] = {"gain_pts": round(mean(gains), 1), "gain_pts_by_seed": gains,
                               "informative_fraction": round(mean([r["informative_fraction"] for r in runs]), 3),
                               "all_fail_fraction": round(mean([r["all_fail_fraction"] for r in runs]), 3),
                               "steps": [r["steps"] for r in runs], "after_by_seed": [r["after"] for r in runs],
                               "extra_forwards_per_answer": round(mean([r["extra_forwards_per_answer"] for r in runs]), 2),
                               "curve": mean_curve([r["curve"] for r in runs])}
    best = max(by_variant, key=lambda v: by_variant[v]["gain_pts"])
    return {"by_variant": by_variant,
            "best": {"variant": best, "gain_pts": by_variant[best]["gain_pts"],
                     "min_seed_gain_pts": min(by_variant[best]["gain_pts_by_seed"])},
            "start_accuracy": runs[0]["before"], "sft_steps": start.get("steps"), "config": os.path.relpath(config, ROOT)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=300.0, help="RL training seconds per run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--configs", nargs="+", default=[os.path.join(ROOT, "configs", "default.yaml"),
                                                         os.path.join(ROOT, "configs", "countdown.yaml")])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--reuse", action="store_true", help="read runs that finished before instead of rerunning them")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    by_config = {}
    for config in args.configs:
        config = os.path.abspath(config)
        by_config[os.path.splitext(os.path.basename(config))[0]] = bench_config(config, args.variants, args.seeds,
                                                                                args.budget, args.set, args.reuse)
    print(json.dumps({"by_config": by_config, "budget_s": args.budget, "seeds": args.seeds, "overrides": args.set,
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores, one run at a time"}))


if __name__ == "__main__":
    main()
