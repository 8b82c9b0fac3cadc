"""All five objectives side by side: held-out accuracy gained at equal RL wall time.

    python benchmarks/objectives.py [--budget 150] [--tasks sudoku4 countdown] [--seeds 0 1]

1. The start. Each task's SFT (configs/<task>_tiny_sft.yaml, constant lr) stops as soon as held-out
   greedy accuracy reaches `--target` (sft.target_accuracy: sudoku4 0.40, countdown 0.20 by default):
   a warm start defined by what it can do, so the benchmark means the same on another machine.
2. The runs. From that checkpoint every objective (trajectory, mean_field, coupled, spg, wd1, each
   with its paper's defaults; configs/<task>_tiny_rl.yaml otherwise) trains for `--budget` seconds of
   training time (evaluations not counted), once per seed, two runs at a time on one core each.
   Held-out greedy accuracy (512 problems) is measured at budget/3, 2·budget/3 and budget.
3. Update cost. Short runs (`--cost-steps`) report seconds per RL step for every objective and for
   trajectory with merge_steps 1/2/4 (`--cost-only` runs just this).
4. `--tune`: first, on the tuning seed (`--tune-seed`, not one of `--seeds`), every objective runs for
   `--tune-budget` seconds at each lr in {1e-5, 3e-5, 1e-4} and each μ (trainer.inner_steps) in {1, 4, 12};
   each objective's best setting by held-out gain is then the one compared on `--seeds`. Trajectory
   runs there with `--signal` (a variant of benchmarks/learning_signal.py: plain | hints | dynamic | hints+dynamic).
   JSON adds tuned.<task>.<objective> = {lr, mu, gain_pts (on the tuning seed)}, tuning (every setting's
   gain) and gain_pts_vs_best_baseline (trajectory minus the best of the other four on sudoku4).
Last output line, JSON: objectives; by_task.<task>.<objective> = {gain_pts, curve} (mean of the seeds;
curve = [{trained_s, accuracy}]); best.<task> = {objective, gain_pts}; gain_pts_vs_mean_field
(trajectory minus mean_field on sudoku4); update_cost_per_step; starts (SFT step and accuracy).
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runs", "bench", "objectives")


OBJECTIVES = ("trajectory", "mean_field", "coupled", "spg", "wd1")
LRS = (1e-5, 3e-5, 1e-4)
MUS = (1, 4, 12)
SIGNAL = {"plain": [], "hints": ["rollout.hints.enabled=true"], "dynamic": ["rollout.dynamic_sampling.enabled=true"],
          "hints+dynamic": ["rollout.hints.enabled=true", "rollout.dynamic_sampling.enabled=true"]}
TARGETS = {"sudoku4": 0.40, "countdown": 0.20}


def sft_checkpoint(task: str, target: float) -> tuple[str, dict]:
    """An SFT checkpoint stopped at the first check (every 10 steps, 128 held-out problems) whose
    accuracy reaches `target`; trained once and reused."""
    name = f"{task}_sft_target{int(round(100 * target))}"
    result = sft_once(os.path.join(ROOT, "configs", f"{task}_tiny_sft.yaml"), os.path.join(ROOT, "runs", "bench"),
                      name, ["threads=2", "sft.lr_schedule=constant", "sft.eval_every=0",
                             f"sft.target_accuracy={target}", "sft.steps=3000"])
    return result["checkpoint"], {"sft_steps": result["steps"], "accuracy": result.get(f"eval/{task}/acc")}


def launch(task: str, name: str, checkpoint: str, overrides: list[str], out: str = OUT) -> subprocess.Popen:
    args = [sys.executable, "-m", "reasoning.cli", "train", os.path.join(ROOT, "configs", f"{task}_tiny_rl.yaml"),
            f"model.path={checkpoint}", f"output_dir={out}", f"name={name}", "logging.progress=false",
            "trainer.checkpoint_every=0", "threads=1", "logging.tensorboard=false", *overrides]
    log = open(os.path.join(out, f"{name}.log"), "w")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def read_metrics(name: str, out: str = OUT) -> list[dict]:
    with open(os.path.join(out, name, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def curve(name: str, task: str, out: str = OUT) -> list[dict]:
    """[(trained seconds, accuracy)] from a run's eval lines (step 0 = the SFT start)."""
    rows, trained = [], {0: 0.0}
    metrics = read_metrics(name, out)
    for m in metrics:
        if "timing_s/trained" in m:
            trained[m["step"]] = m["timing_s/trained"]
    for m in metrics:
        if f"eval/{task}/acc" in m:
            rows.append({"step": m["step"], "trained_s": round(trained.get(m["step"], float("nan")), 1),
                         "accuracy": m[f"eval/{task}/acc"]})
    return rows


def gain(name: str, task: str) -> float:
    points = curve(name, task)
    return round(100 * (points[-1]["accuracy"] - points[0]["accuracy"]), 1)


def tune(task: str, checkpoint: str, objectives: list[str], budget: float, seed: int) -> tuple[dict, dict]:
    """Every objective at every (lr, μ) for `budget` seconds on the tuning seed; returns
    ({objective: {lr, mu, gain_pts}} of the best settings, {objective: {"lr=..,mu=..": gain}})."""
    settings = [(lr, mu) for lr in LRS for mu in MUS]
    jobs = []
    for obj in objectives:
        for lr, mu in settings:
            name = f"tune_{task}_{obj}_lr{lr:g}_mu{mu}"
            shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
            jobs.append((task, name, checkpoint, [f"trainer.objective={obj}", f"trainer.lr={lr}",
                                                  f"trainer.inner_steps={mu}", f"seed={seed}",
                                                  f"trainer.max_seconds={budget}", "trainer.eval_every_s=0",
                                                  "trainer.steps=100000"]))
    run_pair(jobs)
    grid, chosen = {}, {}
    for obj in objectives:
        grid[obj] = {f"lr={lr:g},mu={mu}": gain(f"tune_{task}_{obj}_lr{lr:g}_mu{mu}", task) for lr, mu in settings}
        lr, mu = max(settings, key=lambda s: grid[obj][f"lr={s[0]:g},mu={s[1]}"])
        chosen[obj] = {"lr": lr, "mu": mu, "gain_pts": grid[obj][f"lr={lr:g},mu={mu}"]}
    return chosen, grid


def run_pair(jobs: list[tuple[str, str, str, list[str]]], out: str = OUT) -> None:
    """Run up to two training processes at a time (one core each)."""
    pending = list(jobs)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < 2:
            running.append(launch(*pending.pop(0), out=out))
        time.sleep(1)
        for proc in [p for p in running if p.poll() is not None]:
            if proc.returncode:
                raise RuntimeError(f"{proc.args} failed; see {out}/*.log")
            running.remove(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds per run")
    parser.add_argument("--tasks", nargs="+", default=["sudoku4", "countdown"])
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--target", nargs="+", type=float, help="SFT accuracy target per task (default per task)")
    parser.add_argument("--cost-steps", type=int, default=6)
    parser.add_argument("--cost-only", action="store_true", help="skip the learning curves")
    parser.add_argument("--tune", action="store_true", help="pick each objective's lr and μ on a tuning seed first")
    parser.add_argument("--tune-seed", type=int, default=100)
    parser.add_argument("--tune-budget", type=float, help="training seconds per tuning run (default --budget)")
    parser.add_argument("--signal", default="plain", choices=list(SIGNAL),
                        help="trajectory's signal variant in the comparison (benchmarks/learning_signal.py)")
    args = parser.parse_args()
    if args.cost_only:
        args.tasks = []
    targets = dict(zip(args.tasks, args.target)) if args.target else TARGETS
    os.makedirs(OUT, exist_ok=True)

    by_task, best, starts, tuned, tuning = {}, {}, {}, {}, {}
    for task in args.tasks:
        checkpoint, starts[task] = sft_checkpoint(task, targets[task])
        chosen = {}
        if args.tune:
            chosen, tuning[task] = tune(task, checkpoint, args.objectives, args.tune_budget or args.budget,
                                        args.tune_seed)
            tuned[task] = chosen
            print(task, "tuned", json.dumps(chosen), file=sys.stderr)
        setting = {obj: ([f"trainer.lr={chosen[obj]['lr']}", f"trainer.inner_steps={chosen[obj]['mu']}"]
                         if obj in chosen else []) + (SIGNAL[args.signal] if obj == "trajectory" else [])
                   for obj in args.objectives}
        timed = [f"trainer.max_seconds={args.budget}", f"trainer.eval_every_s={args.budget / 3}",
                 "trainer.steps=100000"]
        jobs = []
        for obj in args.objectives:
            for seed in args.seeds:
                shutil.rmtree(os.path.join(OUT, f"{task}_{obj}_s{seed}"), ignore_errors=True)
                jobs.append((task, f"{task}_{obj}_s{seed}", checkpoint,
                             [f"trainer.objective={obj}", f"seed={seed}", *timed, *setting[obj]]))
        run_pair(jobs)
        by_task[task] = {}
        for obj in args.objectives:
            curves = [curve(f"{task}_{obj}_s{seed}", task) for seed in args.seeds]
            mean_curve = [{"trained_s": round(sum(c[k]["trained_s"] for c in curves) / len(curves), 1),
                           "accuracy": round(sum(c[k]["accuracy"] for c in curves) / len(curves), 4)}
                          for k in range(min(len(c) for c in curves))]
            gains = [100 * (c[-1]["accuracy"] - c[0]["accuracy"]) for c in curves]
            by_task[task][obj] = {"gain_pts": round(sum(gains) / len(gains), 1),
                                  "gain_pts_by_seed": [round(g, 1) for g in gains], "curve": mean_curve}
        name = max(by_task[task], key=lambda o: by_task[task][o]["gain_pts"])
        best[task] = {"objective": name, "gain_pts": by_task[task][name]["gain_pts"]}
        print(task, json.dumps(by_task[task]), file=sys.stderr)

    costs = {}
    if args.cost_steps:
        checkpoint, _ = sft_checkpoint("sudoku4", targets.get("sudoku4", TARGETS["sudoku4"]))
        variants = {"trajectory_merge1": ["trainer.objective=trajectory", "trainer.objective.merge_steps=1"],
                    "trajectory_merge2": ["trainer.objective=trajectory", "trainer.objective.merge_steps=2"],
                    "trajectory_merge4": ["trainer.objective=trajectory", "trainer.objective.merge_steps=4"],
                    **{obj: [f"trainer.objective={obj}"] for obj in OBJECTIVES if obj != "trajectory"}}
        for name in variants:
            shutil.rmtree(os.path.join(OUT, f"cost_{name}"), ignore_errors=True)
        run_pair([("sudoku4", f"cost_{name}", checkpoint, [f"trainer.steps={args.cost_steps}", "eval.n=64", *extra])
                  for name, extra in variants.items()])
        for name in variants:
            steps = [m for m in read_metrics(f"cost_{name}") if "timing_s/update" in m][1:]  # first step warms up
            mean = lambda key: sum(m.get(key, 0.0) for m in steps) / max(len(steps), 1)  # noqa: E731
            costs[name] = {"update_s": round(mean("timing_s/update"), 3), "logp_s": round(mean("timing_s/logp"), 3),
                           "rollout_s": round(mean("timing_s/rollout"), 3),
                           "samples": round(mean("train/samples"), 1)}

    sudoku = by_task.get("sudoku4", {})
    print(json.dumps({
        "objectives": args.objectives,
        "by_task": by_task,
        "best": best,
        "gain_pts_vs_mean_field": (round(sudoku["trajectory"]["gain_pts"] - sudoku["mean_field"]["gain_pts"], 1)
                                   if "trajectory" in sudoku and "mean_field" in sudoku else None),
        "starts": starts,
        "tuned": tuned, "tuning": tuning, "signal": args.signal,
        "gain_pts_vs_best_baseline": (round(sudoku["trajectory"]["gain_pts"] - max(
            sudoku[o]["gain_pts"] for o in sudoku if o != "trajectory"), 1)
            if "trajectory" in sudoku and len(sudoku) > 1 else None),
        "budget_s": args.budget,
        "seeds": args.seeds,
        "update_cost_per_step": costs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread per run, 2 runs at a time",
    }))


if __name__ == "__main__":
    main()
