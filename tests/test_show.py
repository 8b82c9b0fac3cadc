"""`dlmrl show`: trajectory pictures (PNG + self-contained HTML) and run curves."""

import json

import numpy as np

from reasoning.cli import main
from reasoning.show import trajectory_grid
from rollouts import DecodingConfig, DiffusionPolicy, TokenIds, sample, save_jsonl


def test_show_draws_a_trajectory_with_revisions(tmp_path, tiny_model, tiny_tokenizer, capsys):
    policy = DiffusionPolicy(tiny_model, TokenIds.from_tokenizer(tiny_tokenizer))
    cfg = DecodingConfig(gen_length=8, remask="running_confidence", remask_threshold=0.5, remask_budget=3,
                         latent_steps=1)
    trajectories = sample(policy, [tiny_tokenizer("abc")["input_ids"]] * 2, cfg, seeds=[1, 2])
    grid = trajectory_grid(trajectories[0])
    assert grid["remasked"].sum() == trajectories[0].num_remasks > 0
    assert np.isfinite(grid["committed"]).sum() == int(trajectories[0].commits.sum())
    path = tmp_path / "rollouts.jsonl"
    save_jsonl(trajectories, str(path))
    assert main(["show", str(path), "--index", "1"]) == 0
    written = capsys.readouterr().out.split()
    assert [w.rsplit(".", 1)[1] for w in written] == ["png", "html"]
    page = open(written[1]).read()
    assert "<table>" in page and "re-masked" in page and "http" not in page and "<script" not in page
    assert main(["show", str(path), "--index", "5"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_show_plots_a_runs_curves(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": s, "reward": s / 10, "kl": 0.01 * s, "loss": 1 - s / 10} for s in range(1, 6)]
    lines += [{"step": 0, "eval/sudoku4/acc": 0.5}, {"step": 5, "eval/sudoku4/acc": 0.7}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    assert main(["show", str(run)]) == 0
    assert (run / "curves.png").stat().st_size > 1000
    assert main(["show", str(tmp_path / "nothing")]) == 2
