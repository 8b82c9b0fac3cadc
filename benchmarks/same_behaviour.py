"""Does a refactor change any number? The same short RL runs, before and after, compared value by value.

    python benchmarks/same_behaviour.py run  OUT_DIR [--repo DIR]   # the runs, with DIR's code
    python benchmarks/same_behaviour.py diff BEFORE_DIR AFTER_DIR   # metrics that differ, as JSON

The runs: every registered objective, 3 synchronous RL steps on the tiny model (sudoku4, LoRA,
μ 2), hints and dynamic sampling on, under two rewards (VARIANTS: one leaves half the groups without
reward variance, so further prompts are drawn; one lets hinted answers replace answers of failed
groups), one process and one thread each, one after the other. `diff` compares every metrics
line of each run except wall times (`timing_s/*`, `timeline/*`, `perf/*`, `time`, `seconds`).
The last stdout line is the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES = ("trajectory", "just_grpo", "mean_field", "coupled", "spg", "wd1", "gdpo", "espo", "bgpo")
OWN_DECODING = {"just_grpo": ["rollout.block_length=1", "rollout.steps=null", "rollout.decode_past_stop=true"]}
RUN = ["model.tiny={hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64, max_positions: 64}",
       "model.lora.enabled=true", "model.lora.r=4", "data.task=sudoku4", "data.train_size=64", "data.test_size=8",
       "eval.n=8", "rollout.gen_length=20", "rollout.steps=10", "rollout.temperature=1.0", "rollout.group_size=4",
       "rollout.hints.enabled=true", "rollout.dynamic_sampling.enabled=true", "trainer.prompts_per_step=2",
       "trainer.micro_batch_size=4", "trainer.lr=0.01", "trainer.steps=3", "trainer.inner_steps=2",
       "trainer.checkpoint_every=0", "logging.progress=false", "logging.tensorboard=false", "threads=1"]
REWARDS = os.path.join(ROOT, "tests", "reward_fns.py")
VARIANTS = {  # two rewards, so that both group stages act
    # digit fraction on puzzles with an odd number of blanks, 0 on the others: about half the groups
    # uninformative, so dynamic sampling draws further prompts
    "dynamic": [f"rewards=[{{fn: '{REWARDS}:odd_blanks_digit_fraction'}}]"],
    # digit fraction everywhere, a group "failed" below 0.3: hinted answers replace some of its answers
    "hints": [f"rewards=[{{fn: '{REWARDS}:digit_fraction'}}]", "rollout.hints.fail_reward=0.3"],
}
WALL = ("timing_s/", "timeline/", "perf/")


def run(out: str, repo: str) -> dict:
    os.makedirs(out, exist_ok=True)
    config = os.path.join(os.path.abspath(out), "base.yaml")  # `dlmrl train` takes a file; the runs are overrides
    with open(config, "w") as fh:
        fh.write("seed: 0\n")
    codes = {}
    for name, objective, variant in runs():
        args = [sys.executable, "-m", "reasoning.cli", "train", config, *RUN, *VARIANTS[variant],
                f"trainer.objective={objective}", *OWN_DECODING.get(objective, []),
                f"output_dir={os.path.abspath(out)}", f"name={name}", "overwrite=true"]
        with open(os.path.join(out, f"{name}.log"), "w") as log:
            codes[name] = subprocess.run(args, cwd=repo, stdout=log, stderr=subprocess.STDOUT).returncode
    return {"out": out, "repo": repo, "exit_codes": codes}


def runs() -> list[tuple[str, str, str]]:
    return [(f"{objective}_{variant}", objective, variant) for objective in OBJECTIVES for variant in VARIANTS]


def lines(path: str) -> list[dict]:
    with open(path) as fh:
        return [{k: v for k, v in json.loads(line).items()
                 if not k.startswith(WALL) and k not in ("time", "seconds")} for line in fh]


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def diff(before: str, after: str) -> dict:
    report = {}
    for name, _, _ in runs():
        old, new = (lines(os.path.join(d, name, "metrics.jsonl")) for d in (before, after))
        differing = sorted({key for o, n in zip(old, new) for key in set(o) | set(n)
                            if not same(o.get(key), n.get(key))})
        steps = [m for m in new if "reward" in m]
        report[name] = {"lines": [len(old), len(new)], "differing_keys": differing,
                        "updates": max((m.get("policy_version", 0) for m in steps), default=0),
                        "hinted_samples": sum(m.get("train/hinted_samples", 0) for m in steps),  # hints acted
                        "dynamic_rounds": sum(m.get("dynamic/rounds", 0) for m in steps)}  # further prompts drawn
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    runs = verbs.add_parser("run")
    runs.add_argument("out")
    runs.add_argument("--repo", default=ROOT, help="the checkout whose code runs (default: this one)")
    diffs = verbs.add_parser("diff")
    diffs.add_argument("before")
    diffs.add_argument("after")
    args = parser.parse_args()
    print(json.dumps(run(args.out, args.repo) if args.verb == "run" else diff(args.before, args.after)))


if __name__ == "__main__":
    main()
