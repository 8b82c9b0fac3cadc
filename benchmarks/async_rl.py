"""Asynchronous vs synchronous RL on `make run`'s config: RL steps per second and held-out
accuracy after the same training wall time.

    python benchmarks/async_rl.py [--budget 120] [--seeds 0 1]

The start is `make run`'s own SFT warm start (configs/default.yaml's `sft` block: stopped at
40 % held-out accuracy), trained once and reused. From it, per seed, three RL runs of `--budget`
seconds of training time each (evaluations not counted), one after another, each with the whole
machine (`--set key=value ...` changes the config of all three, e.g. rollout.cache=none):
  sync_t2   the same config, synchronous, 2 torch threads (how make run ran before async)
  sync_t1   the same config, synchronous, 1 torch thread
  async     rollout.async.enabled, max_staleness 1: a rollout thread (1 torch thread) samples
            step k+1 while the trainer (1 torch thread) updates on step k
Last output line, JSON: speedup (async steps/s over the best synchronous steps/s), speedup_vs
(per synchronous variant), steps_per_s, accuracy_async / accuracy_sync (held-out, 512 problems,
mean of the seeds, and per seed), staleness_histogram and dropped_fraction of the async runs.
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
OUT = os.path.join(ROOT, "runs", "bench", "async_rl")
CONFIG = os.path.join(ROOT, "configs", "default.yaml")
MODES = {
    "sync_t2": ["rollout.async.enabled=false", "threads=2"],
    "sync_t1": ["rollout.async.enabled=false", "threads=1"],
    "async": ["rollout.async.enabled=true", "rollout.async.max_staleness=1", "threads=1"],
}


def sft_start() -> str:
    """`make run`'s SFT warm start (trained once, reused): its checkpoint directory."""
    return sft_once(CONFIG, OUT, "sft_start")["checkpoint"]


def rl_run(name: str, checkpoint: str, budget: float, seed: int, overrides: list[str]) -> dict:
    shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
    with open(os.path.join(OUT, f"{name}.log"), "w") as log:
        subprocess.run([sys.executable, "-m", "reasoning.cli", "train", CONFIG, f"output_dir={OUT}", f"name={name}",
                        f"model.path={checkpoint}", "trainer.sft_warm_start=false", f"trainer.max_seconds={budget}",
                        "trainer.eval_every_s=0", "trainer.checkpoint_every=0", "trainer.save_rollouts_every=0",
                        f"seed={seed}", "logging.progress=false", *overrides],
                       check=True, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    with open(os.path.join(OUT, name, "summary.json")) as fh:
        summary = json.load(fh)
    summary["steps_per_s"] = summary["steps"] / summary["trained_s"]
    return summary


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds per run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    args = parser.parse_args()
    os.makedirs(OUT, exist_ok=True)
    checkpoint = sft_start()
    runs = {mode: [rl_run(f"{mode}_s{seed}", checkpoint, args.budget, seed, [*MODES[mode], *args.set]) for seed in args.seeds]
            for mode in args.modes}
    for mode, summaries in runs.items():
        print(mode, json.dumps([{k: s[k] for k in ("steps", "trained_s", "before", "after")} for s in summaries]),
              file=sys.stderr)
    steps_per_s = {mode: round(mean([s["steps_per_s"] for s in summaries]), 3) for mode, summaries in runs.items()}
    accuracy = {mode: {"mean": round(mean([s["after"] for s in summaries]), 4),
                       "by_seed": [s["after"] for s in summaries]} for mode, summaries in runs.items()}
    synchronous = [m for m in runs if m.startswith("sync")]
    histogram: dict[str, int] = {}
    for s in runs.get("async", []):
        for k, v in s["staleness_histogram"].items():
            histogram[k] = histogram.get(k, 0) + v
    best_sync = max(synchronous, key=lambda m: steps_per_s[m]) if synchronous else None
    print(json.dumps({
        "speedup": round(steps_per_s["async"] / steps_per_s[best_sync], 2) if "async" in runs and best_sync else None,
        "speedup_vs": {m: round(steps_per_s["async"] / steps_per_s[m], 2) for m in synchronous if "async" in runs},
        "steps_per_s": steps_per_s,
        "accuracy_async": accuracy.get("async"),
        "accuracy_sync": accuracy.get(best_sync),
        "accuracy": accuracy,
        "start_accuracy": runs[args.modes[0]][0]["before"],
        "staleness_histogram": histogram,
        "dropped_fraction": mean([s["dropped_fraction"] for s in runs["async"]]) if "async" in runs else None,
        "budget_s": args.budget, "seeds": args.seeds, "overrides": args.set,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, one run at a time",
    }))


if __name__ == "__main__":
    main()
