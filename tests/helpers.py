"""What several test modules share: the tiny model's sizes, the RL test config, and ways to run and
read a run. No test lives here, so no test module doubles as a helper."""

import json
import os
import subprocess
import sys

from safetensors.torch import load_file

from reasoning.config import load_config

TINY_SIZES = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=64)


def tiny_sizes(**changes) -> str:
    """The override that sizes the tiny default model (`model.tiny={...}`), with `changes` applied."""
    sizes = {**TINY_SIZES, **changes}
    return "model.tiny={" + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + "}"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [  # a 2-step RL run on sudoku4 with LoRA, a reward from tests/reward_fns.py
    tiny_sizes(),
    "model.lora.enabled=true", "model.lora.r=4",
    "data.task=sudoku4", "data.train_size=64", "data.test_size=8", "eval.n=8",
    "rollout.gen_length=20", "rollout.steps=10", "rollout.temperature=1.0", "rollout.group_size=4",
    "rewards=[{fn: 'reward_fns:digit_fraction'}]",
    "trainer.prompts_per_step=2", "trainer.micro_batch_size=4", "trainer.lr=0.01", "trainer.steps=2",
    "trainer.checkpoint_every=0", "logging.progress=false", "logging.tensorboard=false",
]


def config(tmp_path, *overrides):
    return load_config(None, [f"output_dir={tmp_path}", "name=rl", *TINY, *overrides])


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def train_steps(run_dir):
    return [m for m in metrics(run_dir) if "reward" in m]


def adapter(run_dir, step):
    path = os.path.join(run_dir, "checkpoints", f"step_{step:06d}", "adapter", "adapter_model.safetensors")
    return load_file(path)


def cli(tmp_path, name, *overrides):
    """`dlmrl train` in a subprocess of its own (so it can be SIGKILLed)."""
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # set by in-process tests
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    config_file = tmp_path / "rl.yaml"
    config_file.write_text("seed: 3\n")
    args = [sys.executable, "-m", "reasoning.cli", "train", str(config_file), *TINY, f"output_dir={tmp_path}",
            f"name={name}", "trainer.steps=6", "trainer.checkpoint_every=2", *overrides]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def torchrun_train(tmp_path, name: str, *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m reasoning.cli train` on a tiny base model saved under tmp_path."""
    from reasoning.modeling import TinyModelConfig, build_char_tokenizer, build_tiny_model

    base = tmp_path / "base"
    tokenizer = build_char_tokenizer()
    build_tiny_model(TinyModelConfig(**TINY_SIZES), tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    (tmp_path / "rl.yaml").write_text(f"name: {name}\n")
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "reasoning.cli", "train", str(tmp_path / "rl.yaml"), *TINY,
         f"output_dir={tmp_path}", f"model.path={base}", *overrides],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
