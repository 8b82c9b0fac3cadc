"""Does a refactor change any number? The same short RL runs, before and after, compared value by value.

    python benchmarks/same_behaviour.py run  OUT_DIR [--repo DIR]   # the runs, with DIR's code
    python benchmarks/same_behaviour.py diff BEFORE_DIR AFTER_DIR   # metrics that differ, as JSON

The runs: every registered objective, 3 synchronous RL steps on the tiny model (sudoku4, LoRA,
μ 2), hints and dynamic sampling on (the task's 0/1 reward leaves most groups uninformative, so
both act), one process and one thread each, one after the other. `diff` compares every metrics
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
WALL = ("timing_s/", "timeline/", "perf/")


def run(out: str, repo: str) -> dict:
    os.makedirs(out, exist_ok=True)
    codes = {}
    for objective in OBJECTIVES:
        args = [sys.executable, "-m", "reasoning.cli", "train", *RUN, f"trainer.objective={objective}",
                *OWN_DECODING.get(objective, []), f"output_dir={os.path.abspath(out)}", f"name={objective}",
                "overwrite=true"]
        with open(os.path.join(out, f"{objective}.log"), "w") as log:
            codes[objective] = subprocess.run(args, cwd=repo, stdout=log, stderr=subprocess.STDOUT).returncode
    return {"out": out, "repo": repo, "exit_codes": codes}


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
    for objective in OBJECTIVES:
        old, new = (lines(os.path.join(d, objective, "metrics.jsonl")) for d in (before, after))
        differing = sorted({key for o, n in zip(old, new) for key in set(o) | set(n)
                            if not same(o.get(key), n.get(key))})
        report[objective] = {"lines": [len(old), len(new)], "differing_keys": differing}
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
