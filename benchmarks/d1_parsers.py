"""Do our d1 parsers (rewards/d1.py) give d1's own verdicts? On every answer d1 publishes.

    python benchmarks/d1_parsers.py --d1 PATH_TO_A_CLONE_OF_dllm-reasoning/d1

d1 publishes LLaDA-8B-Instruct's answers with its evaluation (eval/eval_baselines/*_generations.json:
GSM8K, MATH-500, Countdown, Sudoku at gen lengths 128 / 256 / 512). This runs d1's own
eval/parse_and_get_acc.py on each (its token counter needs tiktoken, only for a length column; a
stand-in is used where tiktoken is missing) and our parsers on the same text, and counts
agreement: correct / not for GSM8K, MATH and Countdown, the number of cells right for Sudoku.
d1's Countdown parser runs Python's eval on an equation (after its character whitelist): this
script is for d1's own published answers, never for a model's fresh output (dlmrl's parser uses an
AST whitelist instead). Also, per setup (benchmark x gen length), the accuracy of those answers by each parser (Sudoku:
cells right / empty cells). Last line: JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib
import io
import json
import os
import re
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rewards import d1 as ours  # noqa: E402


def d1_module(clone: str):
    """d1's eval/parse_and_get_acc.py, imported from the clone."""
    sys.path.insert(0, os.path.join(clone, "eval"))
    try:
        importlib.import_module("tiktoken")
    except ImportError:  # only its effective-token count uses it
        stand_in = types.ModuleType("tiktoken")
        stand_in.get_encoding = lambda name: types.SimpleNamespace(encode=str.split)
        sys.modules["tiktoken"] = stand_in
    return importlib.import_module("parse_and_get_acc")  # sandbox-ok: d1's code, run on d1's published answers


def our_verdict(benchmark: str, item: dict):
    text, truth = item.get("generations", ""), item.get("ground_truth")
    if benchmark == "gsm8k":
        answer = ours.gsm8k_answer(text)
        return answer is not None and answer == truth
    if benchmark == "math500":
        return ours.math_equivalent(ours.math_answer(text), truth)
    if benchmark == "countdown":
        return ours.countdown_solved(text, truth[0], truth[1])
    puzzle = re.search(r"Sudoku puzzle: ([0-9]{16})", item["question"]).group(1)
    return ours.sudoku_cells(text, puzzle, truth)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d1", required=True, help="a clone of github.com/dllm-reasoning/d1")
    args = parser.parse_args()
    files = sorted(glob.glob(os.path.join(args.d1, "eval", "eval_baselines", "*_generations.json")))
    if not files or not os.path.isfile(os.path.join(args.d1, "eval", "parse_and_get_acc.py")):
        raise SystemExit(f"'{args.d1}' is not a clone of dllm-reasoning/d1 (no eval/parse_and_get_acc.py and "
                         f"eval/eval_baselines/*_generations.json)")
    d1 = d1_module(args.d1)
    parse = {"gsm8k": d1.parse_gsm_answers, "math500": d1.parse_math_answers,
             "countdown": d1.parse_countdown_answers, "sudoku": d1.parse_sudoku_answers}
    out = {name: {"answers": 0, "agree": 0, "d1_correct": 0, "disagree_examples": []} for name in parse}
    setups: dict[str, dict] = {}
    for path in files:
        benchmark = os.path.basename(path).split("_")[0]
        data = json.load(open(path))
        with contextlib.redirect_stdout(io.StringIO()):  # d1's parsers print as they go
            _, _, items, _ = parse[benchmark](json_data=data)
        row = out[benchmark]
        setup = setups.setdefault(re.sub(r"_\d+_generations\.json$", "", os.path.basename(path)),
                                  {"answers": 0, "d1": 0, "ours": 0, "cells": 0, "files": 0})
        setup["files"] += 1
        for raw, verdict in zip(data["generations"], items):
            theirs = verdict["correct_cells"] if benchmark == "sudoku" else verdict["is_correct"]
            mine = our_verdict(benchmark, raw)
            row["answers"] += 1
            row["d1_correct"] += int(theirs)
            row["agree"] += int(mine == theirs)
            setup["answers"] += 1
            setup["d1"], setup["ours"] = setup["d1"] + int(theirs), setup["ours"] + int(mine)
            setup["cells"] += verdict.get("empty_cells", 1)
            if mine != theirs and len(row["disagree_examples"]) < 3:
                row["disagree_examples"].append({"file": os.path.basename(path), "d1": theirs, "ours": mine})
    for name, row in out.items():
        print(f"{name:10s} {row['agree']:5d} / {row['answers']:5d} agree")
    accuracy = {}
    for name, s in sorted(setups.items()):
        accuracy[name] = {"answers": s["answers"], "files": s["files"], "d1_pct": round(100 * s["d1"] / s["cells"], 2),
                          "ours_pct": round(100 * s["ours"] / s["cells"], 2)}
        print(f"{name:28s} {s['answers']:5d} answers  d1 {accuracy[name]['d1_pct']:6.2f} %  ours "
              f"{accuracy[name]['ours_pct']:6.2f} %")
    print(json.dumps({"files": len(files), **out, "accuracy": accuracy}))


if __name__ == "__main__":
    main()
