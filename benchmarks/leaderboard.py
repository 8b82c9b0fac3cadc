"""Every objective under one protocol: tuned the same way, measured on the same seeds, data and time.

    python benchmarks/leaderboard.py [--budget 60] [--tune-budget 20] [--tasks sudoku4 countdown]
                                     [--lrs 3e-5 1e-4] [--mus 1 4] [--seeds 1 2 3] [--tune-seed 0]

1. The start. Each task's SFT stops at its accuracy target (sudoku4 0.40, countdown 0.20; the same
   checkpoints as benchmarks/objectives.py, trained once and reused).
2. Tuning. On the tuning seed, every objective runs for `--tune-budget` seconds of training time at
   every (lr, μ = trainer.inner_steps) of the grid; its best by held-out gain (`--tune-n` problems)
   is the setting it is measured with. The grid is the same for every objective.
3. Measurement. Each objective, at its tuned setting and otherwise its paper defaults, trains for
   `--budget` seconds of training time on each of `--seeds` (none of them the tuning seed), from the
   same start, on the same data; held-out greedy accuracy on `--n` problems before and after.
4. Report. Per task and objective: mean accuracy after, mean gain, and a 95 % Student-t interval of
   the gain across seeds (mean ± t_{0.975, k−1} · s / √k, s the sample std over the k seeds). Rows
   are sorted by mean gain. A markdown table on stderr; the last stdout line is the JSON.

`just_grpo` runs with its own decoding rule (block 1, every position decoded, steps = gen_length);
every other objective with the task config's rollout. Two runs at a time, one core each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys

from scipy import stats

from objectives import ROOT, TARGETS, curve, run_pair, sft_checkpoint

OUT = os.path.join(ROOT, "runs", "bench", "leaderboard")
OBJECTIVES = ("trajectory", "just_grpo", "mean_field", "coupled", "spg", "wd1", "gdpo", "espo", "bgpo")
# just_grpo's rollouts decode one token per step, left to right; its evaluation decodes as every other row's
OWN_DECODING = {"just_grpo": ["rollout.block_length=1", "rollout.steps=null", "rollout.decode_past_stop=true",
                              "eval.decoding.block_length=null"]}


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval over `values` (half-width nan for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, half


def job(task: str, name: str, checkpoint: str, objective: str, seed: int, budget: float, n: int,
        lr: float | None = None, mu: int | None = None) -> tuple:
    shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
    overrides = [f"trainer.objective={objective}", f"seed={seed}", f"trainer.max_seconds={budget}",
                 "trainer.eval_every_s=0", "trainer.steps=100000", f"eval.n={n}", *OWN_DECODING.get(objective, [])]
    if lr is not None:
        overrides += [f"trainer.lr={lr}", f"trainer.inner_steps={mu}"]
    return task, name, checkpoint, overrides


def accuracy_gain(name: str, task: str) -> tuple[float, float, float]:
    """(accuracy before, after, gain in points) of a finished run."""
    points = curve(name, task, OUT)
    return points[0]["accuracy"], points[-1]["accuracy"], 100 * (points[-1]["accuracy"] - points[0]["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per measured run")
    parser.add_argument("--tune-budget", type=float, default=20.0, help="training seconds per tuning run")
    parser.add_argument("--tasks", nargs="+", default=["sudoku4", "countdown"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-5, 1e-4])
    parser.add_argument("--mus", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--tune-seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=512, help="held-out problems per measured evaluation")
    parser.add_argument("--tune-n", type=int, default=256, help="held-out problems per tuning evaluation")
    args = parser.parse_args()
    if args.tune_seed in args.seeds:
        parser.error("--tune-seed must not be one of --seeds (the measurement would reuse the tuning run)")
    os.makedirs(OUT, exist_ok=True)
    grid = [(lr, mu) for lr in args.lrs for mu in args.mus]

    report, starts, tuning = {}, {}, {}
    for task in args.tasks:
        checkpoint, starts[task] = sft_checkpoint(task, TARGETS[task])
        run_pair([job(task, f"tune_{task}_{obj}_lr{lr:g}_mu{mu}", checkpoint, obj, args.tune_seed, args.tune_budget,
                      args.tune_n, lr, mu) for obj in args.objectives for lr, mu in grid], OUT)
        tuning[task] = {obj: {f"lr={lr:g},mu={mu}": round(accuracy_gain(f"tune_{task}_{obj}_lr{lr:g}_mu{mu}", task)[2], 1)
                              for lr, mu in grid} for obj in args.objectives}
        chosen = {obj: max(grid, key=lambda s: tuning[task][obj][f"lr={s[0]:g},mu={s[1]}"]) for obj in args.objectives}
        run_pair([job(task, f"{task}_{obj}_s{seed}", checkpoint, obj, seed, args.budget, args.n, *chosen[obj])
                  for obj in args.objectives for seed in args.seeds], OUT)
        rows = {}
        for obj in args.objectives:
            runs = [accuracy_gain(f"{task}_{obj}_s{seed}", task) for seed in args.seeds]
            gain, half = t_interval([g for _, _, g in runs])
            rows[obj] = {"lr": chosen[obj][0], "mu": chosen[obj][1], "before": round(statistics.fmean(b for b, _, _ in runs), 4),
                         "after": round(statistics.fmean(a for _, a, _ in runs), 4), "gain_pts": round(gain, 1),
                         "ci95_pts": round(half, 1), "gain_pts_by_seed": [round(g, 1) for _, _, g in runs]}
        report[task] = dict(sorted(rows.items(), key=lambda kv: -kv[1]["gain_pts"]))
        print(table(task, report[task], args), file=sys.stderr)
    print(json.dumps({
        "protocol": {"budget_s": args.budget, "tune_budget_s": args.tune_budget, "lrs": args.lrs, "mus": args.mus,
                     "seeds": args.seeds, "tune_seed": args.tune_seed, "n": args.n, "tune_n": args.tune_n,
                     "interval": "95 % Student t over seeds: mean ± t(0.975, k-1)·s/√k"},
        "starts": starts, "leaderboard": report, "tuning": tuning,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread per run, 2 runs at a time"}))


def table(task: str, rows: dict, args) -> str:
    lines = [f"{task}: {args.budget:g} s of RL per run, seeds {args.seeds}, lr x μ tuned on seed {args.tune_seed}",
             "| objective | lr | μ | before | after | gain (pts) | 95 % CI (t) |", "|---|---|---|---|---|---|---|"]
    for obj, r in rows.items():
        lines.append(f"| `{obj}` | {r['lr']:g} | {r['mu']} | {100 * r['before']:.1f} % | {100 * r['after']:.1f} % | "
                     f"{r['gain_pts']:+.1f} | ± {r['ci95_pts']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
