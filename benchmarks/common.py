"""What several benchmarks share: an SFT start trained once and reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sft_once(config: str, out_dir: str, name: str, overrides: list[str] = ()) -> dict:
    """`dlmrl sft CONFIG` into out_dir/name unless a run there finished; its sft_result.json
    (`checkpoint`, `steps`, `eval/<task>/acc`, ...)."""
    result_file = os.path.join(out_dir, name, "sft_result.json")
    if not os.path.isfile(result_file):
        print(f"training {name} ({os.path.basename(config)}) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "reasoning.cli", "sft", config, f"output_dir={out_dir}", f"name={name}",
                        "overwrite=true", "logging.progress=false", *overrides],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    with open(result_file) as fh:
        return json.load(fh)
