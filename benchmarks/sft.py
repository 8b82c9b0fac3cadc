"""Masked-diffusion SFT from scratch on a synthetic task: time to the held-out accuracy.

    python benchmarks/sft.py --task sudoku4      # configs/sudoku4_tiny_sft.yaml
    python benchmarks/sft.py --task countdown    # configs/countdown_tiny_sft.yaml

Trains in a temporary run directory (or --output-dir) and prints one JSON line last:
{"task", "seconds", "accuracy", "steps", "machine", ...}. `seconds` is the whole
wall time of the run, process start-up and data generation included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

START = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sudoku4", choices=["sudoku4", "countdown", "addition"])
    parser.add_argument("--config", help="default: configs/<task>_tiny_sft.yaml")
    parser.add_argument("--output-dir", help="default: a temporary directory")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args()

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from reasoning.config import load_config
    from reasoning.sft import run_sft

    config = args.config or os.path.join(ROOT, "configs", f"{args.task}_tiny_sft.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(config, [f"output_dir={args.output_dir or tmp}", "logging.progress=false", *args.overrides])
        result = run_sft(cfg)
    print(json.dumps({
        "task": args.task,
        "seconds": round(time.perf_counter() - START, 1),
        "accuracy": result[f"eval/{args.task}/acc"],
        "steps": result["steps"],
        "train_seconds": round(result["seconds"], 1),
        "eval_n": cfg.eval.n,
        "threads": cfg.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        **{k.split("/")[-1]: v for k, v in result.items() if k.startswith("eval/") and not k.endswith("/acc")},
    }))


if __name__ == "__main__":
    main()
