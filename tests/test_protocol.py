"""`dlmrl eval --protocol d1` (reasoning/protocols.py) and d1's parsers (rewards/d1.py)."""

from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest

import rewards
from reasoning.cli import main
from reasoning.evaluate import EvalResult
from reasoning.protocols import BENCHMARKS, d1_decoding, d1_prompt, table_row
from rollouts import load_tokenizer

from helpers import tiny_sizes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D1 = os.path.join(ROOT, "tests", "fixtures", "d1")
LLADA = os.path.join(ROOT, "tests", "fixtures", "realarch", "llada", "ckpt")
TINY = [tiny_sizes(num_layers=1, max_positions=1024), "eval.batch_size=4"]


def published_answers() -> list[dict]:
    with open(os.path.join(D1, "d1_generations.jsonl")) as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("item", published_answers(), ids=lambda r: f"{r['benchmark']}")
def test_d1_parsers_give_d1s_own_verdicts_on_its_published_answers(item):
    """The verdicts in the fixture came from d1's eval/parse_and_get_acc.py, run on d1's answers."""
    bench, text, truth = item["benchmark"], item["generation"], item["ground_truth"]
    if bench == "gsm8k":
        assert rewards.get("d1_gsm8k")([""], [text], answer=[truth]) == [float(item["d1_correct"])]
    elif bench == "math500":
        assert rewards.get("d1_math")([""], [text], answer=[truth]) == [float(item["d1_correct"])]
    elif bench == "countdown":
        numbers, target = truth
        assert rewards.get("d1_countdown")([""], [text], numbers=[numbers], target=[target]) == \
            [float(item["d1_correct"])]
    else:
        puzzle = re.search(r"Sudoku puzzle: ([0-9]{16})", item["question"]).group(1)
        empty = puzzle.count("0")
        score = rewards.get("d1_sudoku")([""], [text], puzzle=[puzzle], solution=[truth])[0]
        assert score == pytest.approx(item["d1_correct_cells"] / empty)


def test_the_gsm8k_reference_is_read_after_its_hashes():
    assert rewards.get("d1_gsm8k")([""], ["<answer>\\boxed{70000}</answer>"], answer=["...\n#### 70,000"]) == [1.0]
    assert rewards.get("d1_gsm8k")([""], ["<answer>70001</answer>"], answer=["#### 70000"]) == [0.0]


def test_d1_prompt_is_the_chat_template_over_system_and_question_then_reasoning_prefilled():
    tokenizer = load_tokenizer(LLADA)
    ids = d1_prompt(tokenizer, BENCHMARKS["countdown"], "Numbers: [1, 2]\nTarget: 3")
    text = tokenizer.decode(ids)
    assert text.startswith("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nUsing only the provided")
    assert text.endswith("Target: 3<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n<reasoning>")


def test_d1_subsample_is_the_one_d1_draws(tmp_path):
    path = tmp_path / "4x4_test_sudoku.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Puzzle", "Solution"])
        solution = "1234341221434321"
        for i in range(500):  # puzzle i reveals the solution's cells at the set bits of i: 500 distinct, valid rows
            writer.writerow(["".join(c if i >> p & 1 else "0" for p, c in enumerate(solution)), solution])
    rows = BENCHMARKS["sudoku"].rows(str(tmp_path))
    np.random.seed(42)  # d1's eval.py: init_seed(42), then the dataset draws with the global generator
    expected = np.random.choice(500, 256, replace=False)
    drawn = [sum(1 << p for p, c in enumerate(r["puzzle"]) if c != "0") for r in rows]
    assert drawn == [int(i) for i in expected]


def test_sudoku_accuracy_is_cells_correct_over_cells_empty_across_puzzles():
    rows = [{"puzzle": "0" * 2 + "1" * 14}, {"puzzle": "0" * 6 + "1" * 10}]
    records = [{"index": 0, "reward": 0.5, "correct": False}, {"index": 1, "reward": 1.0, "correct": True}]
    result = EvalResult(task="sudoku", n=2, accuracy=0.5, mean_steps=4.0, tokens_per_s=1.0, records=records)
    row = table_row("sudoku", 128, rows, result, 2.0, d1_decoding(128), 1)
    assert row["accuracy"] == pytest.approx((1 + 6) / 8)
    assert row["answers_per_s"] == pytest.approx(1.0)


def test_d1_protocol_writes_one_table_row_per_benchmark_and_gen_length(tmp_path, capsys):
    out = tmp_path / "d1"
    code = main(["eval", "configs/sudoku4_tiny_sft.yaml", "--protocol", "d1", "--data", D1, "--gen-lengths", "32",
                 "64", "--n", "2", "--output", str(out), *TINY])
    assert code == 0
    table = json.load(open(out / "d1.json"))["rows"]
    assert [(r["benchmark"], r["gen_length"]) for r in table] == [
        (b, g) for b in ("gsm8k", "math500", "countdown", "sudoku") for g in (32, 64)]
    for row in table:
        assert row["n"] == 2 and 0.0 <= row["accuracy"] <= 1.0 and row["nfe"] > 0 and row["answers_per_s"] > 0
        decoding = row["decoding"]
        assert (decoding["block_length"], decoding["steps"], decoding["temperature"], decoding["commit"]) == \
            (32, row["gen_length"] // 2, 0.0, "low_confidence")
        records = [json.loads(line) for line in open(out / f"d1_{row['benchmark']}_{row['gen_length']}.jsonl")]
        assert len(records) == 2
    markdown = open(out / "d1.md").read().splitlines()
    assert markdown[0].startswith("| benchmark | gen length | n | accuracy % |") and len(markdown) == 2 + 8


@pytest.mark.parametrize("args, names", [
    (["--protocol", "d2"], ["d2", "d1"]),
    (["--protocol", "d1", "--data", "MISSING_SPLIT"], ["gsm8k_test.jsonl", "--data"]),
    (["--protocol", "d1", "--data", "BAD_FIELD", "--benchmarks", "countdown"], ["countdown_cd3_test.jsonl", "'input'"]),
    (["--protocol", "d1", "--benchmarks", "sudoku"], ["sudoku", "--data"]),
    (["--protocol", "d1", "--benchmarks", "gsm8k"], ["openai/gsm8k", "--data"]),  # the hub is off in tests
    (["--protocol", "d1", "--gen-lengths", "100"], ["--gen-lengths", "100"]),
])
def test_bad_protocol_input_is_one_line_naming_it(tmp_path, capsys, args, names):
    (tmp_path / "missing").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "countdown_cd3_test.jsonl").write_text('{"nums": "1,2", "output": "3"}\n')
    args = [{"MISSING_SPLIT": str(tmp_path / "missing"), "BAD_FIELD": str(tmp_path / "bad")}.get(a, a) for a in args]
    assert main(["eval", "configs/sudoku4_tiny_sft.yaml", *args, *TINY]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("Generating")]
    assert len(err) == 1 and err[0].startswith("dlmrl eval: error:")  # (datasets' progress bar aside)
    for name in names:
        assert name in err[0]


def test_a_block_diffusion_model_runs_the_protocol_in_its_own_blocks(tmp_path):
    out = tmp_path / "d1"
    assert main(["eval", "configs/block_sudoku4.yaml", "--protocol", "d1", "--data", D1, "--gen-lengths", "32",
                 "--n", "1", "--benchmarks", "sudoku", "--output", str(out), "model.path=null", *TINY]) == 0
    row, = json.load(open(out / "d1.json"))["rows"]
    assert (row["decoding"]["block_length"], row["decoding"]["steps"]) == (4, 16)  # the model's block, d1's steps


def test_sampled_answers_give_pass_at_k_columns(tmp_path):
    out = tmp_path / "d1"
    assert main(["eval", "configs/sudoku4_tiny_sft.yaml", "--protocol", "d1", "--data", D1, "--gen-lengths", "32",
                 "--n", "2", "--benchmarks", "countdown", "--samples", "3", "eval.decoding.temperature=0.8",
                 "--output", str(out), *TINY]) == 0
    row, = json.load(open(out / "d1.json"))["rows"]
    assert row["decoding"]["temperature"] == 0.8 and {"pass@1", "pass@3"} <= set(row)
    assert len(open(out / "d1_countdown_32.jsonl").readlines()) == 6  # 2 problems x 3 answers
    assert "| pass@1 | pass@3 |" in open(out / "d1.md").read()
