"""Objectives side by side: learning efficiency at equal wall time, and update cost per RL step.

    python benchmarks/objectives.py [--budget 300] [--tasks sudoku4 countdown]

1. Learning efficiency. From the same SFT checkpoint — sudoku4 deliberately under-trained
   (`--sudoku-sft-steps`, default 250, constant lr), countdown the shipped SFT run — `trajectory` and
   `mean_field` train side by side (one process and one core each, configs/<task>_tiny_rl.yaml)
   for `--budget` seconds of training time; held-out greedy accuracy (512 problems) is
   measured at budget/3, 2·budget/3 and budget (eval time not counted).
2. Update cost. Short runs (`--cost-steps`) of every objective, and of `trajectory` with
   merge_steps 1/2/4, report seconds per RL step spent computing log-probs and updating.
Last output line, JSON: gain_pts_vs_mean_field (sudoku4 accuracy points, trajectory minus
mean_field at the largest budget; goal >= 10), per task the curves, and update costs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "runs", "bench", "objectives")


def sft_checkpoint(task: str, steps: int | None) -> str:
    """An SFT checkpoint; sudoku4 is trained to `steps` only (an under-trained start for RL)."""
    name = f"{task}_sft_{steps}" if steps else f"{task}_tiny_sft"
    run_dir = os.path.join(ROOT, "runs", "bench", name)
    found = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step_*")))
    if not found:
        overrides = [f"output_dir={os.path.dirname(run_dir)}", f"name={name}", "logging.progress=false", "threads=2"]
        if steps:  # stop early at a constant learning rate: a usable but clearly unfinished model
            overrides += [f"sft.steps={steps}", f"sft.eval_every={steps}", "sft.lr_schedule=constant"]
        print(f"training {name} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "reasoning.cli", "sft",
                        os.path.join(ROOT, "configs", f"{task}_tiny_sft.yaml"), *overrides], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        found = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step_*")))
    return found[-1]


def launch(task: str, name: str, checkpoint: str, overrides: list[str]) -> subprocess.Popen:
    args = [sys.executable, "-m", "reasoning.cli", "train", os.path.join(ROOT, "configs", f"{task}_tiny_rl.yaml"),
            f"model.path={checkpoint}", f"output_dir={OUT}", f"name={name}", "logging.progress=false",
            "trainer.checkpoint_every=0", "threads=1", *overrides]
    log = open(os.path.join(OUT, f"{name}.log"), "w")
    return subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def read_metrics(name: str) -> list[dict]:
    with open(os.path.join(OUT, name, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def curve(name: str, task: str) -> list[dict]:
    """[(trained seconds, accuracy)] from a run's eval lines (step 0 = the SFT start)."""
    rows, trained = [], {0: 0.0}
    for m in read_metrics(name):
        if "timing_s/trained" in m:
            trained[m["step"]] = m["timing_s/trained"]
    for m in read_metrics(name):
        if f"eval/{task}/acc" in m:
            rows.append({"step": m["step"], "trained_s": round(trained.get(m["step"], float("nan")), 1),
                         "accuracy": m[f"eval/{task}/acc"]})
    return rows


def run_pair(jobs: list[tuple[str, str, str, list[str]]]) -> None:
    """Run up to two training processes at a time (one core each)."""
    pending = list(jobs)
    running: list[subprocess.Popen] = []
    while pending or running:
        while pending and len(running) < 2:
            running.append(launch(*pending.pop(0)))
        time.sleep(1)
        for proc in [p for p in running if p.poll() is not None]:
            if proc.returncode:
                raise RuntimeError(f"{proc.args} failed; see {OUT}/*.log")
            running.remove(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per objective")
    parser.add_argument("--tasks", nargs="+", default=["sudoku4", "countdown"])
    parser.add_argument("--sudoku-sft-steps", type=int, default=250)
    parser.add_argument("--cost-steps", type=int, default=6)
    parser.add_argument("--cost-only", action="store_true", help="skip the learning curves")
    args = parser.parse_args()
    if args.cost_only:
        args.tasks = []
    os.makedirs(OUT, exist_ok=True)

    curves, gains = {}, {}
    for task in args.tasks:
        checkpoint = sft_checkpoint(task, args.sudoku_sft_steps if task == "sudoku4" else None)
        timed = [f"trainer.max_seconds={args.budget}", f"trainer.eval_every_s={args.budget / 3}",
                 "trainer.steps=100000"]
        run_pair([(task, f"{task}_{obj}", checkpoint, [f"trainer.objective={obj}", *timed])
                  for obj in ("trajectory", "mean_field")])
        curves[task] = {obj: curve(f"{task}_{obj}", task) for obj in ("trajectory", "mean_field")}
        final = {obj: rows[-1]["accuracy"] for obj, rows in curves[task].items()}
        gains[task] = round(100 * (final["trajectory"] - final["mean_field"]), 1)
        print(task, json.dumps(curves[task]), file=sys.stderr)

    costs = {}
    checkpoint = sft_checkpoint("sudoku4", args.sudoku_sft_steps)
    variants = {"trajectory_merge1": ["trainer.objective=trajectory", "trainer.merge_steps=1"],
                "trajectory_merge2": ["trainer.objective=trajectory", "trainer.merge_steps=2"],
                "trajectory_merge4": ["trainer.objective=trajectory", "trainer.merge_steps=4"],
                "mean_field": ["trainer.objective=mean_field"], "coupled": ["trainer.objective=coupled"]}
    for name in variants:
        shutil.rmtree(os.path.join(OUT, f"cost_{name}"), ignore_errors=True)
    run_pair([("sudoku4", f"cost_{name}", checkpoint, [f"trainer.steps={args.cost_steps}", "eval.n=64", *extra])
              for name, extra in variants.items()])
    for name in variants:
        steps = [m for m in read_metrics(f"cost_{name}") if "timing_s/update" in m][1:]  # first step warms up
        mean = lambda key: sum(m.get(key, 0.0) for m in steps) / max(len(steps), 1)  # noqa: E731
        costs[name] = {"update_s": round(mean("timing_s/update"), 3), "logp_s": round(mean("timing_s/logp"), 3),
                       "rollout_s": round(mean("timing_s/rollout"), 3), "samples": round(mean("train/samples"), 1)}

    print(json.dumps({
        "gain_pts_vs_mean_field": gains.get("sudoku4"),
        "gain_pts_by_task": gains,
        "budget_s": args.budget,
        "curves": curves,
        "update_cost_per_step": costs,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread per run, 2 runs at a time",
    }))


if __name__ == "__main__":
    main()
