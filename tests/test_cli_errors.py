"""Bad input through the real CLI: every case exits 2 with one line naming the culprit, shows no
traceback, and writes nothing (the run directory is never created). Plus run-directory ownership."""

import json
import os

import pytest

from reasoning.cli import main

HERE = os.path.dirname(os.path.abspath(__file__))
FNS = os.path.join(HERE, "reward_fns.py")
SDAR = os.path.join(HERE, "fixtures", "blockarch", "sdar", "ckpt")
FAST = ["model.tiny={hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64, max_positions: 64}",
        "data.train_size=16", "data.test_size=4", "eval.n=4", "trainer.steps=1", "trainer.prompts_per_step=2",
        "rollout.group_size=2", "rollout.temperature=1.0", "logging.tensorboard=false", "logging.progress=false",
        "sft.steps=1", "sft.batch_size=4"]


def write(path, text):
    path.write_text(text)
    return str(path)


def reward(name):
    return f"rewards=[{{fn: '{FNS}:{name}'}}]"


def gsm8k_file(tmp, lines):
    return write(tmp / "gsm8k.jsonl", "\n".join(lines) + "\n")


GOOD_ROW = json.dumps({"question": "1+1?", "answer": "#### 2"})
SAVED = {"prompt_ids": [1, 2], "gen_length": 4, "block_length": 4, "mask_id": 9, "event_step": [0, 1, 2, 3],
         "event_position": [0, 1, 2, 3], "event_token": [1, 2, 3, 4], "event_logp": [-0.1] * 4,
         "selection_logp": [0.0] * 4, "final_tokens": [1, 2, 3, 4], "forward_passes": 4}  # a saved trajectory
NO_FIELD_ROW = json.dumps({"q": 1})

def checkpoint_dir(tmp, state_text):
    path = tmp / "ckpt"
    path.mkdir()
    (path / "trainer_state.json").write_text(state_text)
    return str(path)


def rl_checkpoint(tmp, kind):
    """An RL checkpoint's layout (state, ds/, weights) that does not fit FAST's model: LoRA of rank
    8 where the run has 4, full weights of another width, or written by 2 processes."""
    import torch
    from safetensors.torch import save_file

    path = tmp / "rlckpt"
    (path / "ds").mkdir(parents=True)
    world = 2 if kind == "world" else 1
    (path / "trainer_state.json").write_text(json.dumps({"step": 1, "policy_version": 1, "world_size": world}))
    if kind == "rank":
        (path / "adapter").mkdir()
        save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 32)},
                  str(path / "adapter" / "adapter_model.safetensors"))
    else:
        save_file({"model.embed_tokens.weight": torch.zeros(50, 48)}, str(path / "model.safetensors"))
    return str(path)


def damaged_model(tmp, how):
    """A tiny bidirectional model directory whose model.safetensors is cut short, garbage, or holds
    a tensor of the wrong shape."""
    import torch
    from safetensors.torch import load_file, save_file

    from reasoning.modeling import TinyModelConfig, build_char_tokenizer, build_tiny_model

    path = tmp / "model"
    tokenizer = build_char_tokenizer()
    build_tiny_model(TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=64),
                     tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    weights = path / "model.safetensors"
    if how == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[:len(data) // 2])
    elif how == "garbage":
        weights.write_bytes(b"\x00garbage" * 100)
    else:
        tensors = load_file(weights)
        name = next(k for k in tensors if k.endswith("mlp.up_proj.weight"))
        tensors[name] = torch.zeros(3, 5)
        save_file(tensors, weights, metadata={"format": "pt"})
    return str(path)


def run_dir_with(tmp, metrics_text):
    path = tmp / "somerun"
    path.mkdir()
    (path / "metrics.jsonl").write_text(metrics_text)
    return str(path)


def make_dir(path):
    path.mkdir()
    return str(path)


def make_fifo(path):
    os.mkfifo(path)
    return str(path)


def make_link(path, target):
    os.symlink(target, path)
    return str(path)


# 10 levels of 10 aliases each: a 400-byte file that stands for 10^10 values
ALIAS_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
ALIAS_BOMB_FLOW = "{a: &a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"b{i}: &b{i} [{', '.join([('*b' + str(i - 1)) if i else '*a'] * 10)}]" for i in range(9)) + "}"

# (case id, argv builder(tmp) -> list, expected text in the one error line)
CASES = [
    ("group_size 0", lambda t: ["train", *FAST, "rollout.group_size=0"], "rollout.group_size"),
    ("group_size 1 trains nothing", lambda t: ["train", *FAST, "rollout.group_size=1"], "rollout.group_size"),
    ("train_size 0", lambda t: ["train", *FAST, "data.train_size=0"], "data.train_size"),
    ("sft batch_size 0", lambda t: ["sft", *FAST, "sft.batch_size=0"], "sft.batch_size"),
    ("negative lr", lambda t: ["train", *FAST, "trainer.lr=-1"], "trainer.lr"),
    ("negative max_staleness", lambda t: ["train", *FAST, "rollout.async.max_staleness=-1"],
     "rollout.async.max_staleness"),
    ("async not a bool", lambda t: ["train", *FAST, "rollout.async.enabled=maybe"], "rollout.async.enabled"),
    ("stale rollouts, objective without behaviour log-probs",
     lambda t: ["train", *FAST, "rollout.async.enabled=true", "trainer.objective=coupled"], "rollout.async"),
    ("importance cap below 1", lambda t: ["train", *FAST, "trainer.objective.importance_cap=0.5"],
     "trainer.objective.importance_cap"),
    ("an objective setting as an old flat key", lambda t: ["train", *FAST, "trainer.merge_steps=2"],
     "trainer.objective: {name: trajectory, merge_steps: 2}"),
    ("an unknown objective setting", lambda t: ["train", *FAST, "trainer.objective={name: spg, spg_bta: 1.0}"],
     "did you mean 'spg_beta'"),
    ("another objective's setting", lambda t: ["train", *FAST, "trainer.objective={name: trajectory, spg_beta: 1.0}"],
     "trainer.objective.spg_beta"),
    ("an objective mapping without a name", lambda t: ["train", *FAST, "trainer.objective={merge_steps: 2}"],
     "trainer.objective.name"),
    ("an objective class that is not there", lambda t: ["train", *FAST, f"trainer.objective={FNS}:NoSuchClass"],
     "NoSuchClass"),
    ("infinite lr", lambda t: ["train", *FAST, "trainer.lr=.inf"], "trainer.lr"),
    ("nan lr", lambda t: ["train", *FAST, "trainer.lr=.nan"], "trainer.lr"),
    ("infinite sft lr", lambda t: ["sft", *FAST, "sft.lr=.inf"], "sft.lr"),
    ("nan reward weight", lambda t: ["train", *FAST, "rewards=[{name: sudoku4, weight: .nan}]"], "weight"),
    ("reward timeout 0", lambda t: ["train", *FAST, "rewards.timeout_s=0"], "rewards.timeout_s"),
    ("negative max_seconds", lambda t: ["train", *FAST, "trainer.max_seconds=-1"], "trainer.max_seconds"),
    ("nan max_seconds", lambda t: ["train", *FAST, "trainer.max_seconds=.nan"], "trainer.max_seconds"),
    ("duplicated block", lambda t: ["train", write(t / "dup.yaml", "name: run\ntrainer: {lr: 1.0e-4}\n"
                                                                  "trainer: {steps: 2}\n"), *FAST], "duplicate key"),
    ("alias bomb", lambda t: ["train", write(t / "bomb.yaml", ALIAS_BOMB), *FAST], "aliases expand"),
    ("alias bomb in an override", lambda t: ["train", *FAST, "data.task_args=" + ALIAS_BOMB_FLOW], "aliases expand"),
    ("NaN prompt in a data file", lambda t: ["eval", write(t / "c.yaml", "name: e\n"), *FAST, "--data",
                                                    gsm8k_file(t, [GOOD_ROW, '{"question": NaN, "answer": "#### 1"}'])],
     "line 2"),
    ("null prompt in a data file", lambda t: ["train", *FAST, "data.task=gsm8k", "data.test_size=1",
                                              "data.task_args={path: " + gsm8k_file(t, [GOOD_ROW, GOOD_ROW, '{"question": null, "answer": "#### 1"}']) + "}"],
     "line 3"),
    ("list prompt in a data file", lambda t: ["train", *FAST, "data.task=gsm8k", "data.test_size=1",
                                              "data.task_args={path: " + gsm8k_file(t, [GOOD_ROW, '{"question": ["a", "b"], "answer": "#### 1"}']) + "}"],
     "field 'question'"),
    ("reward wrong length (default on_error)", lambda t: ["train", *FAST, reward("returns_too_few")],
     "returned 0 values"),
    ("reward needs a missing column", lambda t: ["train", *FAST, reward("length_penalty")], "needs column"),
    ("garbage trainer_state.json", lambda t: ["train", *FAST, f"trainer.resume={checkpoint_dir(t, 'garbage{')}"],
     "trainer_state.json"),
    ("resume from an SFT checkpoint", lambda t: ["train", *FAST,
                                                 "trainer.resume=" + checkpoint_dir(t, '{"step": 5}')],
     "not an RL checkpoint"),
    ("resume: adapters of another LoRA rank", lambda t: ["train", *FAST, "model.lora.enabled=true", "model.lora.r=4",
                                                        "trainer.resume=" + rl_checkpoint(t, "rank")], "model.lora.r"),
    ("resume: full weights of another shape", lambda t: ["train", *FAST, "trainer.resume=" + rl_checkpoint(t, "shape")],
     "model.embed_tokens.weight"),
    ("resume: LoRA run from full weights", lambda t: ["train", *FAST, "model.lora.enabled=true",
                                                     "trainer.resume=" + rl_checkpoint(t, "shape")],
     "model.lora.enabled"),
    ("resume: written by 2 processes", lambda t: ["train", *FAST, "trainer.resume=" + rl_checkpoint(t, "world")],
     "2 trainer process"),
    ("look-alike letter in a key", lambda t: ["train", *FAST, "tr\u0430iner.lr=1e-4"], "U+0430"),
    ("zero-width space in a key", lambda t: ["train", write(t / "zw.yaml", "name: run\ntrainer\u200b: {lr: 1.0e-4}\n"),
                                             *FAST], "U+200B"),
    ("config is a directory", lambda t: ["train", make_dir(t / "d.yaml"), *FAST], "is a directory"),
    ("config is a FIFO", lambda t: ["train", make_fifo(t / "f.yaml"), *FAST], "not a regular file"),
    ("config links to /dev/zero", lambda t: ["train", make_link(t / "z.yaml", "/dev/zero"), *FAST],
     "not a regular file"),
    ("reward file is a directory", lambda t: ["train", *FAST, f"rewards=[{{fn: '{make_dir(t / 'r.py')}:f'}}]"],
     "is a directory"),
    ("seed -1", lambda t: ["train", *FAST, "seed=-1"], "'seed'"),
    ("seed 2**70", lambda t: ["train", *FAST, f"seed={2 ** 70}"], "'seed'"),
    ("truncated model.safetensors (bidirectional)", lambda t: ["eval", damaged_model(t, "truncate")],
     "model.safetensors"),
    ("garbage model.safetensors (bidirectional)", lambda t: ["eval", damaged_model(t, "garbage")], "model.safetensors"),
    ("wrong-shaped tensor (bidirectional)", lambda t: ["eval", damaged_model(t, "shape")], "has shape [3, 5]"),
    ("show a malformed rollouts file", lambda t: ["show", write(t / "r.jsonl", '{"prompt_ids": [1]}\n')], "line 1"),
    ("show a run with malformed metrics", lambda t: ["show", run_dir_with(t, '{"step": 1}\n[1, 2]\n')], "line 2"),
    ("sft: gen_length past the context", lambda t: ["sft", *FAST, "model.tiny.max_positions=24"], "context"),
    ("hint ratio 0", lambda t: ["train", *FAST, "rollout.hints.enabled=true", "rollout.hints.ratio=[0.0, 0.5]"],
     "rollout.hints.ratio"),
    ("hint ratio above 1", lambda t: ["train", *FAST, "rollout.hints.ratio=[0.5, 1.5]"], "rollout.hints.ratio"),
    ("hint ratio not a pair", lambda t: ["train", *FAST, "rollout.hints.ratio=[0.5]"], "rollout.hints.ratio"),
    ("hint replace fraction above 1", lambda t: ["train", *FAST, "rollout.hints.replace_fraction=1.5"],
     "rollout.hints.replace_fraction"),
    ("hint replace fraction negative", lambda t: ["train", *FAST, "rollout.hints.replace_fraction=-0.1"],
     "rollout.hints.replace_fraction"),
    ("unknown train_hints", lambda t: ["train", *FAST, "rollout.hints.train_hints=all"], "rollout.hints.train_hints"),
    ("draw factor below 1", lambda t: ["train", *FAST, "rollout.dynamic_sampling.enabled=true",
                                       "rollout.dynamic_sampling.max_draw_factor=0.5"],
     "rollout.dynamic_sampling.max_draw_factor"),
    ("unknown placement", lambda t: ["train", *FAST, "ray.placement=diagonal"], "ray.placement"),
    ("dual cache without blocks", lambda t: ["train", *FAST, "rollout.cache=dual"], "rollout.cache"),
    ("top_k 0", lambda t: ["train", *FAST, "rollout.top_k=0"], "top_k"),
    ("top_p above 1", lambda t: ["train", *FAST, "rollout.top_p=1.5"], "top_p"),
    ("cache with latent thinking", lambda t: ["train", *FAST, "rollout.cache=prefix", "rollout.latent_steps=1"],
     "rollout.cache"),
    ("sft lr 0", lambda t: ["sft", *FAST, "sft.lr=0"], "sft.lr"),
    ("hidden not divisible by heads", lambda t: ["train", *FAST, "model.tiny.hidden_size=30", "model.tiny.num_heads=4"],
     "not divisible"),
    ("odd head size", lambda t: ["train", *FAST, "model.tiny.hidden_size=30"], "must be even"),
    ("reward file syntax error", lambda t: ["train", *FAST, f"rewards=[{{fn: '{write(t / 'bad.py', 'def f(:')}:f'}}]"],
     "syntax error"),
    ("reward raises (raise)", lambda t: ["train", *FAST, reward("raising"), "rewards.on_error=raise"], "boom"),
    ("reward NaN (raise)", lambda t: ["train", *FAST, reward("returns_nan"), "rewards.on_error=raise"], "nan"),
    ("reward None (raise)", lambda t: ["train", *FAST, reward("returns_none"), "rewards.on_error=raise"], "NoneType"),
    ("reward text (raise)", lambda t: ["train", *FAST, reward("returns_text"), "rewards.on_error=raise"], "'high'"),
    ("reward wrong length (raise)", lambda t: ["train", *FAST, reward("returns_too_few"), "rewards.on_error=raise"],
     "returned 0 values"),
    ("malformed train JSONL", lambda t: ["train", *FAST, "data.task=gsm8k",
                                         f"data.task_args.path={gsm8k_file(t, [GOOD_ROW, '{oops'])}"], "line 2"),
    ("JSONL line not an object", lambda t: ["train", *FAST, "data.task=gsm8k",
                                            f"data.task_args.path={gsm8k_file(t, [GOOD_ROW, '[1, 2]'])}"], "line 2"),
    ("malformed eval JSONL", lambda t: ["eval", write(t / "c.yaml", "name: e\n"), *FAST, "--data",
                                        gsm8k_file(t, ['{"question": 1', GOOD_ROW])], "line 1"),
    ("prompt longer than context", lambda t: ["train", *FAST, "model.tiny.max_positions=24"], "context"),
    ("output_dir is a file", lambda t: ["train", *FAST, f"output_dir={write(t / 'f', 'x')}"], "not a directory"),
    ("output_dir cannot be created", lambda t: ["train", *FAST, "output_dir=/dev/null/runs"], "cannot create"),
    ("rollout.steps 0", lambda t: ["train", *FAST, "rollout.steps=0"], "rollout.steps"),
    ("unknown key", lambda t: ["train", *FAST, "trainer.lrr=1"], "did you mean 'lr'"),
    ("unknown objective", lambda t: ["train", *FAST, "trainer.objective=grpo"], "trainer.objective"),
    ("model.path missing", lambda t: ["train", *FAST, "model.path=/nonexistent/model"], "model.path"),
    ("model dir without config.json", lambda t: ["train", *FAST, f"model.path={t}"], "config.json"),
    ("unknown task", lambda t: ["train", *FAST, "data.task=sudoku5"], "data.task"),
    ("unknown deepspeed preset", lambda t: ["train", *FAST, "trainer.deepspeed=zero9"], "trainer.deepspeed"),
    ("resume path missing", lambda t: ["train", *FAST, "trainer.resume=/nonexistent/ckpt"], "trainer.resume"),
    ("config file missing", lambda t: ["train", str(t / "nope.yaml"), *FAST], "not found"),
    ("config not YAML", lambda t: ["train", write(t / "c.yaml", "a: [1, 2\n"), *FAST], "not valid YAML"),
    ("config not a mapping", lambda t: ["train", write(t / "c.yaml", "- 1\n- 2\n"), *FAST], "mapping"),
    ("RL at temperature 0", lambda t: ["train", *FAST, "rollout.temperature=0"], "rollout.temperature"),
    ("KL without a reference", lambda t: ["train", *FAST, "trainer.objective.kl_coef=0.1"], "trainer.objective.kl_coef"),
    ("block_length does not divide", lambda t: ["train", *FAST, "rollout.gen_length=20", "rollout.block_length=3"],
     "rollout.block_length"),
    ("negative temperature", lambda t: ["train", *FAST, "rollout.temperature=-1"], "temperature"),
    ("eval.n 0", lambda t: ["train", *FAST, "eval.n=0"], "eval.n"),
    ("test_size 0", lambda t: ["train", *FAST, "data.test_size=0"], "data.test_size"),
    ("threads 0", lambda t: ["train", *FAST, "threads=0"], "threads"),
    ("reward file missing", lambda t: ["train", *FAST, "rewards=[{fn: '/nonexistent/r.py:f'}]"], "not found"),
    ("unknown reward", lambda t: ["train", *FAST, "rewards=[{name: sudoku5}]"], "unknown reward"),
    ("prompts_per_step 0", lambda t: ["train", *FAST, "trainer.prompts_per_step=0"], "trainer.prompts_per_step"),
    ("lora r 0", lambda t: ["train", *FAST, "model.lora.enabled=true", "model.lora.r=0"], "model.lora.r"),
    ("gsm8k without a path", lambda t: ["train", *FAST, "data.task=gsm8k"], "data.task_args.path"),
    ("data file lacks the field", lambda t: ["train", *FAST, "data.task=gsm8k",
                                             f"data.task_args.path={gsm8k_file(t, [NO_FIELD_ROW])}"], "no field"),
    ("empty data file", lambda t: ["train", *FAST, "data.task=gsm8k", f"data.task_args.path={write(t / 'e.jsonl', '')}"],
     "is empty"),
    ("unknown task_args", lambda t: ["train", *FAST, "data.task_args.size=3"], "data.task_args.size"),
    ("unknown dtype", lambda t: ["train", *FAST, "model.dtype=float8"], "model.dtype"),
    ("name with a path", lambda t: ["train", *FAST, "name=../elsewhere"], "name"),
    ("eval of a missing target", lambda t: ["eval", str(t / "missing")], "does not exist"),
    ("sample of a file", lambda t: ["sample", write(t / "x.txt", "x"), "--prompt", "hi"], "not a directory"),
    ("export without checkpoints", lambda t: ["export", str(t), str(t / "out")], "no complete checkpoint"),
    ("micro_batch_size 0", lambda t: ["train", *FAST, "trainer.micro_batch_size=0"], "trainer.micro_batch_size"),
    ("spg with KL", lambda t: ["train", *FAST, "trainer.objective=spg", "model.lora.enabled=true",
                               "trainer.objective.kl_coef=0.1"], "kl_coef"),
    # the drill of 2026-12-07
    ("data file is a FIFO", lambda t: ["train", *FAST, "data.task=gsm8k",
                                       "data.task_args={path: " + make_fifo(t / "rows.jsonl") + "}"], "FIFO"),
    ("data file links to /dev/zero", lambda t: ["train", *FAST, "data.task=gsm8k",
                                                "data.task_args={path: " + make_link(t / "z.jsonl", "/dev/zero") + "}"],
     "character device"),
    ("run name with a newline", lambda t: ["train", *FAST, 'name="a\\nb"'], "config key 'name'"),
    ("run name of 100,000 characters", lambda t: ["train", *FAST, "name=" + "n" * 100_000], "(100002 characters)"),
    ("a billion hinted answers", lambda t: ["train", *FAST, "rollout.hints.enabled=true",
                                            "rollout.hints.samples=1000000000"], "rollout.hints.samples"),
    ("an empty LoRA target parameter", lambda t: ["train", *FAST, "model.lora.enabled=true",
                                                  "model.lora.target_parameters=['']"], "model.lora.target_parameters"),
    ("cache block on a bidirectional model", lambda t: ["train", *FAST, "rollout.cache=block"], "rollout"),
    ("rollout block_length not dividing gen_length", lambda t: ["train", *FAST, "rollout.gen_length=20",
                                                               "rollout.block_length=7"], "block_length"),
    ("the retired model.block_length", lambda t: ["train", *FAST, "model.block_length=4"],
     "model.block_length' is retired"),
    ("a LoRA target parameter the model lacks", lambda t: ["train", *FAST, "model.lora.enabled=true",
                                                           "model.lora.target_parameters=[mlp.experts.down_proj]"],
     "model.lora.target_parameters"),
    ("eval block_length against the attention block", lambda t: ["train", *FAST, f"model.path={SDAR}",
                                                                "rollout.gen_length=8", "eval.decoding.block_length=8"],
     "eval.decoding"),
    ("cache prefix on an SDAR model", lambda t: ["train", *FAST, f"model.path={SDAR}", "rollout.gen_length=8",
                                                 "rollout.cache=prefix"], "cache"),
    ("hints on a task without reference answers", lambda t: [
        "train", *FAST, "data.task=trl", "rollout.hints.enabled=true", "data.task_args={path: " + write(
            t / "p.jsonl", "".join(json.dumps({"prompt": f"q{i}", "solution": "1"}) + "\n" for i in range(24)))
        + ", reward: format}"], "rollout.hints.enabled"),
    ("prefer: a DPO file without 'rejected'", lambda t: ["prefer", *FAST, "prefer.train_file=" + write(
        t / "pairs.jsonl", json.dumps({"prompt": "q", "chosen": "a"}) + "\n")], "no column 'rejected'"),
    ("prefer: a chosen conversation without an assistant turn", lambda t: ["prefer", *FAST, "prefer.train_file=" + write(
        t / "pairs.jsonl", json.dumps({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"})
        + "\n")], "column 'chosen'"),
    ("prefer: beta 0", lambda t: ["prefer", *FAST, "prefer.beta=0"], "prefer.beta"),
    ("prefer: an unknown estimator", lambda t: ["prefer", *FAST, "prefer.estimator=ipo"], "prefer.estimator"),
    ("prefer: resume from an RL checkpoint", lambda t: ["prefer", *FAST, "prefer.resume=" + rl_checkpoint(t, "shape")],
     "not a prefer checkpoint"),
    ("prefer: a block-diffusion model", lambda t: ["prefer", *FAST, f"model.path={SDAR}"], "block-diffusion"),
    ("show /dev/zero", lambda t: ["show", "/dev/zero"], "character device"),
    ("show a FIFO", lambda t: ["show", make_fifo(t / "r.jsonl")], "FIFO"),
    ("show a trajectory with a position past its canvas",
     lambda t: ["show", write(t / "r.jsonl", json.dumps(dict(SAVED, event_position=[0, 1, 2, 7])) + "\n")],
     "event_position holds 7"),
    ("show a trajectory of 10^9 positions", lambda t: ["show", write(t / "r.jsonl", json.dumps(dict(SAVED, gen_length=10 ** 9)) + "\n")],
     "gen_length 1000000000"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tmp_path, capsys):
    _, build, expected = case
    runs = tmp_path / "runs"
    argv = build(tmp_path)
    if argv[0] in ("train", "sft", "prefer") and not argv[1].endswith(".yaml"):
        argv.insert(1, write(tmp_path / "run.yaml", "name: run\n"))
    argv = argv + [f"output_dir={runs}"] if not any(a.startswith("output_dir=") for a in argv) else argv
    before = set(os.listdir(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dlmrl ")]
    assert len(lines) == 1 and expected.lower() in lines[0].lower(), err[-2000:]
    assert "Traceback" not in err
    assert not runs.exists() and set(os.listdir(tmp_path)) == before  # nothing written


@pytest.mark.parametrize("argv", [["train", "c.yaml", "trainer.lr"], ["eval", ".", "--samples", "0"],
                                  ["sample", ".", "--prompt"], ["train"], ["frobnicate"]])
def test_malformed_command_lines_exit_2(argv, capsys):
    """argparse's own usage errors (a token that is not an override, --samples 0, a missing value)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_traceback_flag_shows_the_trace(tmp_path):
    with pytest.raises(Exception, match="rollout.group_size"):
        main(["train", write(tmp_path / "c.yaml", "name: t\n"), *FAST, "rollout.group_size=0",
              f"output_dir={tmp_path}", "--traceback"])


# --- a run owns its directory ------------------------------------------------------------------------

def run(tmp_path, *extra):
    return ["train", write(tmp_path / "owned.yaml", "name: owned\n"), *FAST, "trainer.checkpoint_every=1",
            f"output_dir={tmp_path}", *extra]


def test_a_second_run_into_a_held_directory_is_refused(tmp_path, capsys):
    from reasoning.rundir import claim_run_dir

    run_dir = tmp_path / "owned"
    with claim_run_dir(str(run_dir), resume=False, overwrite=False):  # another run holds it (same lock)
        assert main(run(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"in use by another dlmrl command (pid {os.getpid()})" in err
    assert os.listdir(run_dir) == [".lock"]  # the refused run wrote nothing


def test_a_fresh_run_into_an_old_runs_directory_is_refused(tmp_path, capsys):
    assert main(run(tmp_path)) == 0
    old = sorted(os.listdir(tmp_path / "owned" / "checkpoints"))
    metrics = (tmp_path / "owned" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(run(tmp_path)) == 2
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "owned" / "checkpoints")) == old  # untouched
    assert (tmp_path / "owned" / "metrics.jsonl").read_text() == metrics
    assert main(run(tmp_path, "trainer.resume=auto", "trainer.steps=2")) == 0
    assert main(run(tmp_path, "overwrite=true")) == 0  # explicit start over
    steps = [json.loads(line)["step"] for line in open(tmp_path / "owned" / "metrics.jsonl") if '"reward"' in line]
    assert steps == [1]


def test_an_alias_bomb_is_refused_quickly_and_small():
    """Refused before expansion: within 10 s and under a 2 GB address-space limit."""
    import subprocess
    import sys

    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
            "from reasoning.schema import load_yaml, ConfigError\n"
            f"try:\n    load_yaml({ALIAS_BOMB!r}, 'bomb')\nexcept ConfigError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=10,
                          cwd=os.path.dirname(HERE))
    assert done.returncode == 0 and "aliases expand" in done.stdout, done.stderr[-2000:]


# --- SIGTERM and Ctrl-C: one line, exit 143 / 130, the lock released, nothing left running -------

def interrupt_case(tmp_path, sig, ray):
    import fcntl
    import signal as signals
    import subprocess
    import sys
    import time

    root = os.path.dirname(HERE)
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="ry", dir="/tmp")  # Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                            "MASTER_PORT", "RAY_ADDRESS")}
    env.update(PYTHONPATH=os.pathsep.join([root, HERE]), RAY_TMPDIR=ray_tmp)
    (tmp_path / "rl.yaml").write_text("name: run\n")
    argv = [sys.executable, "-m", "reasoning.cli", "train", str(tmp_path / "rl.yaml"), *FAST, f"output_dir={tmp_path}",
            "trainer.steps=1000", "trainer.checkpoint_every=2", "rewards=[{fn: 'reward_fns:digit_fraction'}]",
            *(["ray.enabled=true", "ray.num_workers=1"] if ray else [])]
    # a shell's background job (`cmd &`) ignores SIGINT, and its children inherit that: give the run
    # the disposition a terminal's Ctrl-C meets, whatever started this test
    proc = subprocess.Popen(argv, env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_DFL))
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000002" / "trainer_state.json"
    deadline = time.monotonic() + 180
    while not checkpoint.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code == (143 if sig == signals.SIGTERM else 130), err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("dlmrl train:")]
    assert len(lines) == 1 and "interrupted at step" in lines[0] and "trainer.resume=auto" in lines[0], err[-3000:]
    assert "Traceback" not in err
    with open(tmp_path / "run" / ".lock") as fh:  # released: this process can take it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    deadline = time.monotonic() + 10
    while True:  # Ray's own processes may take a few seconds to go
        left = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        left = [line for line in left.splitlines() if ray_tmp in line or str(tmp_path / "rl.yaml") in line]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, left


# SIGTERM with and without Ray (ray.init puts its own SIGTERM handler in place, which we replace);
# Ctrl-C without Ray: under Ray SIGINT meets the same handler, and a Ray case costs ~35 s of suite time
@pytest.mark.parametrize("how", ["sigterm", "sigint", "sigterm_ray"])
def test_an_interrupted_run_says_where_to_resume_and_leaves_nothing(tmp_path, how):
    import signal as signals

    # every case checks the one-line message, the exit code, the released lock and that nothing is
    # left running. An interrupt saves nothing of its own, so what the message points to is the newest
    # periodic checkpoint: resuming from it is test_rl.py's kill-and-resume test (equal to a run never
    # stopped), and under Ray test_async.py's lost-node test
    interrupt_case(tmp_path, signals.SIGTERM if how.startswith("sigterm") else signals.SIGINT, how.endswith("ray"))


def test_a_billion_samples_is_refused_quickly_and_small(tmp_path):
    """`dlmrl eval CONFIG --samples 10**9`: one line, exit 2, within 10 s, peak memory under 2 GB
    (jobs are made lazily and the count is checked before any decoding)."""
    import resource
    import subprocess
    import sys
    import time

    config = write(tmp_path / "c.yaml", "name: e\nmodel: {tiny: {hidden_size: 32, num_layers: 1, num_heads: 2, "
                                        "intermediate_size: 64, max_positions: 64}}\ndata: {test_size: 4}\n")
    start = time.monotonic()
    argv = ["eval", config, "--samples", str(10 ** 9), f"output_dir={tmp_path / 'runs'}"]
    code = ("import resource, sys\nfrom reasoning.cli import main\nstatus = main(%r)\n"
            "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(status)\n" % argv)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(HERE))
    elapsed = time.monotonic() - start
    peak_kb = int(done.stdout.split("peak_kb")[-1])
    assert done.returncode == 2 and "--samples" in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert elapsed < 10 and peak_kb < 2 * 1024 * 1024, (elapsed, peak_kb)


def test_a_full_disk_is_one_line_naming_the_directory_and_its_free_space(tmp_path, capsys, monkeypatch):
    """torch.save's own words for a full disk ("unexpected pos") become one line that says so."""
    import torch

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1088 vs 1030")

    monkeypatch.setattr(torch, "save", full)
    argv = ["train", write(tmp_path / "run.yaml", "name: run\n"), *FAST, "trainer.checkpoint_every=1",
            f"output_dir={tmp_path / 'runs'}", "rewards=[{fn: '" + FNS + ":digit_fraction'}]"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("dlmrl ")]
    assert len(lines) == 1 and "no space left" in lines[0] and "MiB free" in lines[0], err[-2000:]
    assert str(tmp_path / "runs" / "run" / "checkpoints") in lines[0] and "Traceback" not in err
    left = os.listdir(tmp_path / "runs" / "run" / "checkpoints")
    assert not [n for n in left if n.startswith((".ds-", ".tmp-"))], left  # no partial staging dir
