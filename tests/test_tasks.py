"""Synthetic tasks: deterministic data, leak-free splits, and the scorer on hand-written cases."""

import pytest

from reasoning.schema import ConfigError
from reasoning.tasks import DataConfig, get_task
from rewards import countdown_correct, extract_answer, is_valid_grid, sudoku4_cell_accuracy, sudoku4_solved

PUZZLE = "1030020400010100"  # blanks are 0
SOLUTION = "1432321443212143"


def build(name, **kw):
    return get_task(name).build(DataConfig(task=name, train_size=kw.pop("train", 3000),
                                           test_size=kw.pop("test", 300), **kw))


def test_sudoku_split_shares_no_solution_grid():
    data = build("sudoku4")
    train_grids = set(data["train"]["solution"])
    test_grids = set(data["test"]["solution"])
    assert train_grids and test_grids
    assert not train_grids & test_grids
    assert all(is_valid_grid(g) for g in train_grids | test_grids)
    assert set(data["train"].column_names) >= {"prompt", "puzzle", "solution"}
    blanks = [p.count("0") for p in data["train"]["puzzle"]]
    assert min(blanks) >= 4 and max(blanks) <= 10


def test_sudoku_puzzle_split_shares_grids_but_no_puzzle():
    data = build("sudoku4", task_args={"split_by": "puzzle"})
    assert set(data["train"]["solution"]) & set(data["test"]["solution"])
    assert not set(data["train"]["puzzle"]) & set(data["test"]["puzzle"])
    with pytest.raises(ValueError, match="split_by"):
        build("sudoku4", task_args={"split_by": "row"})


def test_tasks_are_deterministic_and_test_set_ignores_train_size():
    for name in ("sudoku4", "countdown", "addition"):
        a, b = build(name), build(name, train=500)
        assert tuple(a["train"].column_names) == get_task(name).columns
        assert a["test"]["prompt"] == b["test"]["prompt"]
        assert a["train"]["prompt"][:10] == build(name)["train"]["prompt"][:10]
        assert not set(a["train"]["prompt"]) & set(a["test"]["prompt"])
        other_seed = get_task(name).build(DataConfig(task=name, seed=1, train_size=10, test_size=50))
        assert other_seed["test"]["prompt"] != a["test"]["prompt"][:50]


def test_sudoku_score_accepts_any_valid_solution():
    assert is_valid_grid(SOLUTION)
    task = get_task("sudoku4")
    example = {"puzzle": PUZZLE, "solution": SOLUTION}
    assert task.score(f"<answer>{SOLUTION}</answer>", example) == 1.0
    # A puzzle with many blanks: a different valid grid that keeps the givens also counts.
    sparse = "1000000000000000"
    other = "1234341221434321"
    assert is_valid_grid(other) and other != SOLUTION
    assert sudoku4_solved(f"<answer>{other}</answer>", sparse)
    assert task.score(f"<answer>{other}</answer>", {"puzzle": sparse, "solution": SOLUTION}) == 1.0
    # Separators inside the answer are fine; the last <answer> wins.
    assert task.score(f"<answer>0000</answer> <answer>{SOLUTION[:8]} {SOLUTION[8:]}</answer>", example) == 1.0


@pytest.mark.parametrize("completion", [
    "<answer>1432321443212144</answer>",  # breaks a row/column
    "<answer>2341412312343412</answer>",  # valid grid, but changes the givens
    "<answer>143232144321214</answer>",  # 15 digits
    "<answer>14323214432121435</answer>",  # 17 digits
    "<answer>1432321443212103</answer>",  # leaves a blank
    "",
    "no answer here",
])
def test_sudoku_score_rejects_invalid(completion):
    assert get_task("sudoku4").score(completion, {"puzzle": PUZZLE, "solution": SOLUTION}) == 0.0


def test_sudoku_cell_accuracy():
    half = list(SOLUTION)
    blanks = [i for i, p in enumerate(PUZZLE) if p == "0"]
    for i in blanks[: len(blanks) // 2]:
        half[i] = "9"
    assert sudoku4_cell_accuracy("<answer>" + "".join(half) + "</answer>", PUZZLE, SOLUTION) == pytest.approx(
        1 - (len(blanks) // 2) / len(blanks))
    assert sudoku4_cell_accuracy(f"<answer>{SOLUTION}</answer>", PUZZLE, SOLUTION) == 1.0


def test_countdown_data_and_score():
    data = build("countdown")
    task = get_task("countdown")
    for row in data["test"]:
        assert len(row["numbers"]) == 3 and all(1 <= n <= 100 for n in row["numbers"])
        assert task.score(task.reference(row), row) == 1.0  # the generator's equation is right
    example = {"numbers": [3, 5, 7], "target": 22}
    assert task.score("<answer>3*5+7</answer>", example) == 1.0
    assert task.score("<answer>7+3*5</answer>", example) == 1.0  # any correct equation
    assert task.score("<answer>(7+5)*3-14</answer>", example) == 0.0  # extra number
    assert task.score("<answer>3*5+7+0</answer>", example) == 0.0
    assert task.score("<answer>5*5-3</answer>", example) == 0.0  # wrong multiset
    assert task.score("<answer>3*5+7 = 22</answer>", example) == 1.0
    assert task.score("<answer>3×5+7</answer>", example) == 1.0
    assert countdown_correct("<answer>(7-5)/3*...</answer>", [3, 5, 7], 22) is False
    four = build("countdown", task_args={"num_numbers": 4}, train=200, test=50)
    assert all(len(n) == 4 for n in four["test"]["numbers"])


@pytest.mark.parametrize("hostile", [
    "__import__('os').system('echo pwned')", "(3).__class__", "a+b+c", "(lambda: 22)()",
    "9**9**9", "3/0+5+7", "[3, 5, 7]", "3*5+7; import os", "-3+5*5", "1" * 500,
])
def test_countdown_never_executes(hostile):
    assert countdown_correct(f"<answer>{hostile}</answer>", [3, 5, 7], 22) is False


def test_addition():
    data = build("addition", task_args={"digits": 3})
    task = get_task("addition")
    row = data["test"][0]
    a, b = row["prompt"].split()[-1].split("+")
    assert int(row["answer"]) == int(a) + int(b)
    assert task.score(task.reference(row), row) == 1.0
    assert task.score(f"<answer>{int(row['answer']) + 1}</answer>", row) == 0.0
    assert task.score("<answer>1,234</answer>", {"answer": "1234"}) == 1.0


def test_extract_answer():
    assert extract_answer("x <answer> 1 </answer> y <answer>2</answer> z") == "2"
    assert extract_answer("  plain  ") == "plain"


def test_unknown_task_and_task_arg_named():
    with pytest.raises(ConfigError, match="data.task.*sudoku4"):
        get_task("sudoku")
    with pytest.raises(ConfigError, match="data.task_args.num_number.*num_numbers"):
        build("countdown", task_args={"num_number": 4})


def test_addition_trace_is_a_long_canvas_with_a_correct_trace():
    """The long-canvas task (issue 16): prompts >= 64 tokens, references within a 128-token
    canvas, every row of the written-out sum checked here by schoolbook arithmetic."""
    from reasoning.modeling import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    task = get_task("addition_trace")
    data = task.build(DataConfig(task="addition_trace", train_size=50, test_size=20))
    assert not set(data["train"]["prompt"]) & set(data["test"]["prompt"])
    for example in data["test"]:
        a, b = (line[2:] for line in example["prompt"].split("\n")[-2:])
        assert len(a) == len(b) == 13 and int(a) + int(b) == int(example["answer"])
        reference = task.reference(example)
        assert len(tokenizer(example["prompt"])["input_ids"]) >= 64
        assert len(tokenizer(reference)["input_ids"]) <= 128
        rows = dict(line.split("=") for line in reference.split("\n")[:4])
        carry = 0
        for i in range(12, -1, -1):  # right to left, as on paper
            total = int(a[i]) + int(b[i])
            assert int(rows["u"][i]) == total % 10 and int(rows["g"][i]) == (total >= 10)
            assert int(rows["c"][i]) == carry and int(rows["s"][i]) == (total + carry) % 10
            carry = (total + carry) // 10
        assert int(rows["s"]) == int(a) + int(b)
        assert task.score(reference, example) == 1.0
        assert task.score(reference.replace(f"<answer>{rows['s']}", f"<answer>{int(rows['s']) + 1}"), example) == 0.0
    with pytest.raises(ValueError, match="digits"):
        task.generate(__import__("random").Random(0), 1, "test", set(), digits=0)


def test_bad_data_rows_are_refused_or_skipped_with_a_count(tmp_path, capsys):
    import json

    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": None, "answer": "#### 1"},
            {"question": "2+2?", "answer": "#### 4"}, {"question": ["a"], "answer": "#### 3"},
            {"question": "3+3?", "answer": "#### 6"}]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ConfigError, match=r"line 2: field 'question'.*data.bad_rows: skip"):
        get_task("gsm8k").build(DataConfig(task="gsm8k", test_size=1, task_args={"path": str(path)}))
    splits = get_task("gsm8k").build(DataConfig(task="gsm8k", test_size=1, task_args={"path": str(path)},
                                                bad_rows="skip"))
    assert len(splits["test"]) + len(splits["train"]) == 3
    assert splits["test"][0]["prompt"].startswith("1+1?") and splits["train"][1]["prompt"].startswith("3+3?")
    out = capsys.readouterr().out
    assert "skipped 2 of 5 rows" in out and "line 2" in out


def test_data_files_as_spreadsheets_write_them(tmp_path):
    """A CSV saved with a byte-order mark reads its first column by its name; an empty cell is named
    as empty (not as a missing field); d1's sudoku rows take digits 0-4 only (no 9s, no Arabic-Indic)."""
    from reasoning.protocols import _sudoku
    from reasoning.schema import ConfigError
    from reasoning.tasks.base import row_field
    from reasoning.tasks.files import read_file

    path = tmp_path / "s.csv"
    path.write_bytes("\ufeffPuzzle,Solution\n1234341221434321,1234341221434321\n".encode("utf-8"))
    rows = read_file(str(path))
    assert rows.column_names == ["Puzzle", "Solution"] and rows[0]["Puzzle"] == "1234341221434321"
    with pytest.raises(ConfigError, match="field 'Puzzle' is empty or missing"):
        row_field({"Puzzle": None, "Solution": "1"}, ("Puzzle",), "row 1", "16 digits")
    good = "1234341221434321"
    assert _sudoku({"Puzzle": "0" + good[1:], "Solution": good}, "row 1")["puzzle"] == "0" + good[1:]
    for puzzle in ("9" * 16, "\u0661\u0662\u0663\u0664" * 4, "4" + good[1:]):
        with pytest.raises(ConfigError, match="'Puzzle' / 'Solution'"):
            _sudoku({"Puzzle": puzzle, "Solution": good}, "row 1")
