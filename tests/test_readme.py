"""The README's commands run as written. The quickstart's YAML and Python blocks are read out of
README.md itself and put into the config its train command names, as a user edits it; only what
cannot exist here is swapped (the model path becomes the LLaDA-format fixture, sizes shrink to a
CPU's); then its train, eval and export commands run on it. The CLI block's verbs and options all parse, and the error example prints the
line the README shows."""

import json
import os
import re
import shlex

import pytest
import yaml

from reasoning.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLADA = os.path.join(ROOT, "tests", "fixtures", "realarch", "llada", "ckpt")
SMALL = ["threads=1", "rollout.gen_length=8", "rollout.steps=4", "rollout.block_length=null",
         "rollout.group_size=4", "model.dtype=float32", "model.gradient_checkpointing=false", "model.lora.r=4",
         "trainer.steps=2", "trainer.prompts_per_step=2", "trainer.micro_batch_size=8", "trainer.checkpoint_every=0",
         "eval.n=2", "eval.batch_size=2", "data.test_size=2", "logging.tensorboard=false", "logging.progress=false"]


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as fh:
        return fh.read()


def section(title: str) -> str:
    text = readme()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of `language` ("" = none given), dedented as a user copies them."""
    found, body, indent, current = [], None, 0, None
    for line in text.splitlines():
        stripped = line.lstrip()
        if body is None and stripped.startswith("```"):
            body, indent, current = [], len(line) - len(stripped), stripped[3:].strip()
        elif body is not None and stripped.startswith("```"):
            if current == language:
                found.append("\n".join(row[indent:] for row in body))
            body = None
        elif body is not None:
            body.append(line)
    return found


def test_the_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    quickstart = section("Quickstart")
    yamls, pythons, commands = blocks(quickstart, "yaml"), blocks(quickstart, "python"), blocks(quickstart, "bash")
    assert len(yamls) == 3 and len(pythons) == 1 and len(commands) == 1
    monkeypatch.chdir(tmp_path)
    # the reward file, exactly as the README writes it (its first line names the file)
    name = re.match(r"# (\S+\.py)", pythons[0]).group(1)
    (tmp_path / name).write_text(pythons[0] + "\n")
    # the config the train command names, with the quickstart's blocks put in as a user edits it
    with open(os.path.join(ROOT, "configs", "gpu", "llada8b_gsm8k_lora.yaml")) as fh:
        config = yaml.safe_load(fh)
    for block in yamls:
        config.update(yaml.safe_load(block))
    # the data file the data block names, in TRL's GRPO format (a conversation and a solution column)
    data_path = tmp_path / config["data"]["task_args"]["path"]
    data_path.parent.mkdir(parents=True, exist_ok=True)
    with open(data_path, "w") as fh:
        for i in range(8):
            fh.write(json.dumps({"prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
                                 "solution": str(i + 1)}) + "\n")
    assert config["model"]["path"] == "/models/LLaDA-8B-Instruct"
    config["model"]["path"] = LLADA  # the LLaDA-format fixture stands for the 8B snapshot
    config.update(name="quickstart", output_dir=str(tmp_path / "runs"))
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(config))

    train, evaluate, export = (shlex.split(line.split("#")[0]) for line in commands[0].splitlines() if line.strip())
    assert train[:2] == ["dlmrl", "train"] and evaluate[:2] == ["dlmrl", "eval"] and export[:2] == ["dlmrl", "export"]
    assert train[2] == "configs/gpu/llada8b_gsm8k_lora.yaml"  # that config, as edited above, shrunk to a CPU's
    assert main(["train", "quickstart.yaml", *SMALL]) == 0
    run = tmp_path / "runs" / "quickstart"
    steps = [json.loads(line) for line in open(run / "metrics.jsonl") if '"reward"' in line]
    assert [m["step"] for m in steps] == [1, 2]
    assert all("rewards/accuracy_reward/mean" in m and "rewards/brevity/mean" in m for m in steps)
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    capsys.readouterr()
    assert main(["eval", str(checkpoint), *[a for a in evaluate[3:] if "=" in a]]) == 0
    assert main(["export", str(run), str(tmp_path / "OUT_DIR")]) == 0
    assert (tmp_path / "OUT_DIR" / "config.json").is_file()


def test_every_verb_and_option_of_the_cli_block_parses(capsys):
    cli = blocks(section("The CLI"), "bash")[0]
    for line in cli.splitlines():
        words = shlex.split(line.split("#")[0])
        verb, options = words[1], [w.strip("[") for w in words if w.lstrip("[").startswith("--")]
        if verb == "lm-eval":  # lm-eval's own command line
            continue
        with pytest.raises(SystemExit) as done:
            main([verb, "--help"])
        assert done.value.code == 0, verb
        shown = capsys.readouterr().out
        for option in options:
            assert option in shown, (verb, option)


def test_the_error_example_prints_the_line_the_readme_shows(monkeypatch, capsys):
    example = next(b for b in blocks(section("The CLI"), "") if b.startswith("$ dlmrl"))
    command, expected = example.splitlines()[:2]
    monkeypatch.chdir(ROOT)
    assert main(shlex.split(command[2:])[1:]) == 2
    assert capsys.readouterr().err.strip().startswith(expected)
