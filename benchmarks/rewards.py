"""Throughput of the built-in reward functions and the sandbox's per-call overhead.

    python benchmarks/rewards.py [--n 2000]

Completions are a mix of correct, wrong and malformed answers for each verifier. Last
output line, JSON: completions_per_s per built-in (called in-process, one batch), the
reward runner's per-batch overhead, and sandbox_overhead_s = mean wall time of
`run_python("pass")` minus the same interpreter started bare.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def batches(n: int) -> dict[str, tuple[list, dict]]:
    """Per built-in: (completions, columns) of size n (code: n // 50, each a sandbox run)."""
    rng = random.Random(0)
    grid = "1234341221434321"
    sudoku = [f"<answer>{grid if rng.random() < .5 else grid[::-1]}</answer>" for _ in range(n)]
    countdown = [rng.choice(["<answer>(5-3)*4</answer>", "<answer>3+4+5</answer>", "<answer>9**9**9</answer>",
                             "<answer>__import__('os')</answer>"]) for _ in range(n)]
    gsm = [rng.choice(["so <answer>1,234</answer>", "\\boxed{72}", "it is 5 then 72.", "none"]) for _ in range(n)]
    math = [rng.choice(["\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{x^2+1}", "\\boxed{3}"]) for _ in range(n)]
    fmt = [rng.choice(["<think>a</think><answer>4</answer>", "<answer>4</answer> junk", "4"]) for _ in range(n)]
    k = max(n // 50, 4)
    code = [rng.choice(["```python\ndef add(a, b):\n    return a + b\n```", "```python\ndef add(a, b):\n    return 0\n```"])
            for _ in range(k)]
    return {
        "sudoku4": (sudoku, {"puzzle": ["1234341221434320"] * n}),
        "sudoku4_cells": (sudoku, {"puzzle": ["1234341221434320"] * n, "solution": [grid] * n}),
        "countdown": (countdown, {"numbers": [[3, 4, 5]] * n, "target": [8] * n}),
        "addition": ([f"<answer>{i}</answer>" for i in range(n)], {"answer": [str(i) for i in range(n)]}),
        "gsm8k": (gsm, {"answer": ["#### 72"] * n}),
        "math": (math, {"answer": ["1/2"] * n}),
        "format": (fmt, {}),
        "code": (code, {"tests": [["assert add(1, 2) == 3", "assert add(0, 0) == 0"]] * k}),
    }


def sandbox_overhead(calls: int) -> dict:
    from rewards.sandbox import run_python, sandbox_python

    python = sandbox_python()
    bare, boxed = [], []
    for _ in range(calls):
        start = time.perf_counter()
        subprocess.run([python, "-I", "-S", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - start)
        start = time.perf_counter()
        result = run_python("pass")
        boxed.append(time.perf_counter() - start)
        assert result.ok, result
    return {"sandbox_call_s": round(statistics.mean(boxed), 4), "bare_python_s": round(statistics.mean(bare), 4),
            "sandbox_overhead_s": round(statistics.mean(boxed) - statistics.mean(bare), 4)}


def main() -> None:
    import argparse

    import rewards
    from rewards import RewardRunner, RewardsConfig, RewardSpec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--sandbox-calls", type=int, default=20)
    args = parser.parse_args()

    throughput = {}
    for name, (completions, columns) in batches(args.n).items():
        fn = rewards.get(name)
        prompts = ["p"] * len(completions)
        fn(prompts[:2], completions[:2], **{k: v[:2] for k, v in columns.items()})  # imports, caches
        start = time.perf_counter()
        scores = fn(prompts, completions, **columns)
        seconds = time.perf_counter() - start
        assert len(scores) == len(completions)
        throughput[name] = round(len(completions) / seconds, 1)
        print(name, throughput[name], file=sys.stderr)

    # the runner around two in-process built-ins and one pooled function (math): per-batch cost
    completions, columns = batches(256)["gsm8k"]
    specs = [RewardSpec(name="gsm8k"), RewardSpec(name="format"), RewardSpec(name="math")]
    with RewardRunner(RewardsConfig(functions=specs)) as run:
        run._get_pool()
        start = time.perf_counter()
        for _ in range(5):
            run(["p"] * 256, completions, answer=["72"] * 256)
        runner_s = (time.perf_counter() - start) / 5

    print(json.dumps({
        "completions_per_s": throughput,
        "runner_batch_256_s": round(runner_s, 4),
        **sandbox_overhead(args.sandbox_calls),
        "n": args.n,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
