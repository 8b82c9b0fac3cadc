"""`dlmrl eval`: reproduces training's eval, file-backed tasks, pass@k, clear errors."""

import json
import os

import pytest

from reasoning.cli import main
from reasoning.config import load_config
from reasoning.evaluate import pass_at_k
from reasoning.rl import run_rl
from reasoning.sft import run_sft

TINY_MODEL = "model.tiny={hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64, max_positions: 96}"


def logged_eval(run_dir, task):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        lines = [json.loads(line) for line in fh]
    return [m[f"eval/{task}/acc"] for m in lines if f"eval/{task}/acc" in m][-1]


def run_eval_cli(capsys, *args) -> dict:
    assert main(["eval", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "sudoku4_tiny_sft.yaml"), [
        f"output_dir={out}", TINY_MODEL, "sft.steps=60", "sft.eval_every=0", "sft.batch_size=32",
        "sft.lr=0.003", "data.train_size=2000", "data.test_size=64", "eval.n=64", "logging.progress=false",
        "logging.tensorboard=false"])
    result = run_sft(cfg)
    return cfg, result["checkpoint"]


def test_eval_reproduces_the_accuracy_logged_by_sft(sft_run, capsys):
    cfg, checkpoint = sft_run
    summary = run_eval_cli(capsys, checkpoint)
    assert summary["accuracy"] == logged_eval(cfg.run_dir, "sudoku4")
    assert summary["n"] == 64 and summary["mean_steps"] == 20 and summary["decoding"]["steps"] == 20
    assert {"task", "tokens_per_s", "cell_accuracy"} <= set(summary)
    out_dir = os.path.join(cfg.run_dir, "eval", os.path.basename(checkpoint))
    with open(os.path.join(out_dir, "eval.jsonl")) as fh:
        rows = [json.loads(line) for line in fh]
    assert len(rows) == 64 and {"prompt", "completion", "reward", "correct", "steps"} <= set(rows[0])


def test_eval_reproduces_the_accuracy_logged_by_rl(sft_run, tmp_path, capsys):
    _, checkpoint = sft_run
    cfg = load_config(None, [
        f"output_dir={tmp_path}", "name=rl", f"model.path={checkpoint}", "model.lora.enabled=true",
        "data.task=sudoku4", "data.train_size=64", "data.test_size=32", "eval.n=32", "rollout.gen_length=20",
        "rollout.steps=10", "rollout.temperature=1.0", "rollout.group_size=4", "trainer.steps=2",
        "trainer.prompts_per_step=2", "trainer.checkpoint_every=0", "trainer.lr=0.01",
        "logging.progress=false", "logging.tensorboard=false"])
    run_rl(cfg)
    final = os.path.join(cfg.run_dir, "checkpoints", "step_000002")
    assert os.path.isdir(os.path.join(final, "adapter"))
    summary = run_eval_cli(capsys, final)
    assert summary["accuracy"] == logged_eval(cfg.run_dir, "sudoku4")


def test_samples_give_pass_at_k(sft_run, capsys):
    _, checkpoint = sft_run
    summary = run_eval_cli(capsys, checkpoint, "--samples", "3", "--n", "8", "eval.decoding.temperature=1.0")
    assert summary["samples"] == 3 and 0 <= summary["pass@1"] <= summary["pass@3"] <= 1
    assert summary["pass@1"] == pytest.approx(summary["accuracy"])


def test_pass_at_k_estimator():
    assert pass_at_k(4, 0, 1) == 0 and pass_at_k(4, 4, 2) == 1
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25) and pass_at_k(4, 1, 4) == 1
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - (3 / 5) * (2 / 4))


def test_eval_on_a_data_file(sft_run, tmp_path, capsys):
    _, checkpoint = sft_run
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps({"q": f"what is {i}+{i}?", "ans": f"so #### {2 * i}"}) for i in range(6)))
    summary = run_eval_cli(capsys, checkpoint, "--data", str(path), "--prompt-field", "q", "--answer-field", "ans",
                           "rollout.gen_length=20")
    assert summary["task"] == "gsm8k" and summary["n"] == 6 and 0 <= summary["accuracy"] <= 1


def test_eval_bad_inputs_name_the_path_or_field(sft_run, tmp_path, capsys):
    _, checkpoint = sft_run
    assert main(["eval", str(tmp_path)]) == 2
    assert "is neither a dlmrl checkpoint (trainer_state.json) nor a model directory" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "1+1?"}) + "\n")
    assert main(["eval", checkpoint, "--data", str(bad)]) == 2
    assert "has no field 'answer'" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["eval", checkpoint, "--data", str(empty)]) == 2
    assert f"'{empty}' is empty" in capsys.readouterr().err
    assert main(["eval", checkpoint, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


def test_sample_prints_one_answer_with_its_trajectory(sft_run, tmp_path, capsys):
    _, checkpoint = sft_run
    assert main(["sample", checkpoint, "--prompt", "sudoku 1030040220100300", "--output", str(tmp_path),
                 "eval.decoding.remask=running_confidence"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["steps"] >= 1 and os.path.isfile(out["trajectory"]) and all(os.path.isfile(p) for p in out["pictures"])


def test_eval_reads_a_run_config_saved_by_another_version(sft_run, tmp_path, capsys):
    """A run's own config.yaml with a key this version no longer knows: dropped with a note, not refused
    (a user's config with the same key is still an error)."""
    import shutil

    import yaml

    cfg, checkpoint = sft_run
    run_dir = tmp_path / "old_run"
    shutil.copytree(checkpoint, run_dir / "checkpoints" / "step_000060")
    with open(os.path.join(cfg.run_dir, "config.yaml")) as fh:
        saved = yaml.safe_load(fh)
    saved["trainer"]["save_rollouts"] = 5  # renamed to save_rollouts_every since
    with open(run_dir / "config.yaml", "w") as fh:
        yaml.safe_dump(saved, fh)
    assert main(["eval", str(run_dir / "checkpoints" / "step_000060")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["accuracy"] == logged_eval(cfg.run_dir, "sudoku4")
    assert "ignoring its keys trainer.save_rollouts" in err
    with pytest.raises(Exception, match="unknown config key 'trainer.save_rollouts'"):
        load_config(str(run_dir / "config.yaml"))


def test_eval_scores_a_sudoku_file_in_d1s_csv_layout(sft_run, tmp_path, capsys):
    """d1's dataset/4x4_test_sudoku.csv layout (header Puzzle,Solution; blanks are 0, so many puzzles
    start with a 0), holding the run's own held-out puzzles: the same accuracy as its logged eval."""
    cfg, checkpoint = sft_run
    from reasoning.tasks import get_task

    test = get_task("sudoku4").build(cfg.data)["test"]
    path = tmp_path / "4x4_test_sudoku.csv"
    path.write_text("Puzzle,Solution\n" + "".join(f"{p},{s}\n" for p, s in zip(test["puzzle"], test["solution"])))
    assert any(p.startswith("0") for p in test["puzzle"])  # the leading zeros must survive the CSV reader
    summary = run_eval_cli(capsys, checkpoint, "--task", "sudoku4", "--data", str(path), "--n", "64")
    assert summary["task"] == "sudoku4" and summary["n"] == 64
    assert summary["accuracy"] == logged_eval(cfg.run_dir, "sudoku4")


def test_countdown_and_addition_rows_from_a_users_file(tmp_path):
    from reasoning.tasks import DataConfig, get_task

    d1 = tmp_path / "countdown_cd3_test.jsonl"  # d1's layout: input "a,b,c", output "target"
    d1.write_text('{"input": "30,100,93", "output": "23"}\n{"input": "83,18,75", "output": "10"}\n')
    test = get_task("countdown").build(DataConfig(task="countdown", test_size=2, task_args={"path": str(d1)}))["test"]
    assert test["prompt"] == ["use 30 100 93 to make 23", "use 83 18 75 to make 10"]
    assert test["numbers"][0] == [30, 100, 93] and test["target"] == [23, 10]
    assert eval(test["solution"][0]) == 23  # noqa: S307 — a canonical equation found by search, checked here
    ours = tmp_path / "addition.jsonl"
    ours.write_text('{"a": 12, "b": 30}\n')
    test = get_task("addition").build(DataConfig(task="addition", test_size=1, task_args={"path": str(ours)}))["test"]
    assert test["prompt"] == ["compute 12+30"] and test["answer"] == ["42"]


def test_bad_rows_of_a_task_file_name_the_row_and_field(sft_run, tmp_path, capsys):
    _, checkpoint = sft_run
    bad = tmp_path / "puzzles.jsonl"
    bad.write_text('{"puzzle": "1234341221434321", "solution": "1234341221434321"}\n{"puzzle": "0234341221434321"}\n')
    assert main(["eval", checkpoint, "--task", "sudoku4", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"data file '{bad}' row 2: field 'solution' is empty or missing in this row" in err
    bad.write_text('{"puzzle": "12", "solution": "1234341221434321"}\n')
    assert main(["eval", checkpoint, "--task", "sudoku4", "--data", str(bad)]) == 2
    assert "row 1: field 'puzzle' = '12': expected 16 digits" in capsys.readouterr().err
    assert main(["eval", checkpoint, "--task", "sudoku4", "--data", str(bad), "--answer-field", "x"]) == 2
    assert "reads its own fields" in capsys.readouterr().err
