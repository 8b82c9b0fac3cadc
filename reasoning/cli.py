"""`dlmrl <verb> CONFIG.yaml [key.sub=value ...]` — the command-line entry point."""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

from reasoning import interrupts
from reasoning.eval_command import cmd_eval
from reasoning.output import set_verbose
from reasoning.schema import ConfigError, setting_error
from reasoning.targets import load_run_checkpoint, load_target, to_accelerator


def _quiet_environment() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights and data never come from a hub at run time
    import torch  # every verb imports it anyway

    if not torch.cuda.is_available():  # DeepSpeed warns when it has to find out the CPU itself
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def run_recipe(args: argparse.Namespace, recipe) -> int:
    """Load the config, run the recipe (SFT, RL, preference training), print its result as JSON."""
    from reasoning.config import load_config

    cfg = load_config(args.config, args.overrides)
    if cfg.logging.verbose:
        set_verbose(True)
    print(json.dumps(recipe(cfg)))
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from reasoning.sft import run_sft

    return run_recipe(args, run_sft)


def cmd_train(args: argparse.Namespace) -> int:
    from reasoning.rl import run_rl

    return run_recipe(args, run_rl)


def cmd_prefer(args: argparse.Namespace) -> int:
    from reasoning.prefer import run_prefer

    return run_recipe(args, run_prefer)


def cmd_sample(args: argparse.Namespace) -> int:
    """One answer from a checkpoint or a model directory, with its trajectory saved as JSONL + pictures."""
    import torch

    from reasoning.data import decode_completion, encode_prompt
    from reasoning.show import show_trajectories
    from rollouts import make_policy, sample, save_jsonl

    if not os.path.isdir(args.checkpoint):
        raise ConfigError(f"'{args.checkpoint}' is not a directory (expected a dlmrl checkpoint or a model directory)")
    if not 0 <= args.seed < 2 ** 63:
        raise ConfigError(f"--seed: expected an integer in [0, 2**63), got {args.seed}")
    cfg, model, tokenizer, base = load_target(args.checkpoint, args.overrides)
    torch.set_num_threads(cfg.threads)
    policy = make_policy(to_accelerator(model).eval(), tokenizer, cfg.model.shift_logits)
    try:
        prompt = encode_prompt(tokenizer, args.prompt, cfg.data.chat_template)
        trajectory = sample(policy, [prompt], cfg.eval_decoding(), seeds=[args.seed])[0]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    completion = decode_completion(tokenizer, trajectory.final_tokens, policy.ids.stop)
    out_dir = args.output or os.path.join(base, "samples")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"sample_{args.seed}.jsonl")
    save_jsonl([trajectory], path)
    pictures = show_trajectories(path, tokenizer)
    print(json.dumps({"prompt": args.prompt, "completion": completion, "steps": trajectory.num_steps,
                      "forward_passes": trajectory.forward_passes, "remasks": trajectory.num_remasks,
                      "trajectory": path, "pictures": pictures}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Merged (base + LoRA) weights of a run's newest checkpoint in the base snapshot's original format."""
    from reasoning.checkpoint import complete_checkpoints, is_checkpoint
    from rollouts.families import ModelLoadError, export

    source = args.run
    if not os.path.isdir(source):
        raise ConfigError(f"'{source}' is not a directory (expected a run directory or a checkpoint)")
    if not is_checkpoint(source):
        found = complete_checkpoints(source)
        if not found:
            raise ConfigError(f"'{source}' has no complete checkpoint (checkpoints/step_*/trainer_state.json)")
        source = found[-1]
    cfg, model, _, _ = load_run_checkpoint(source, args.overrides)
    from reasoning.checkpoint import read_state

    base = read_state(source).get("base_model") or cfg.model.path
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    try:
        files = export(model, base, args.output)
    except ModelLoadError as exc:
        raise (setting_error(exc, "model") or ConfigError(str(exc))) from None
    print(json.dumps({"checkpoint": os.path.abspath(source), "base_model": base, "output": args.output,
                      "files": files}))
    return 0


def _find_tokenizer(path: str):
    """The tokenizer of the run a rollouts file or run directory belongs to (None if not found)."""
    from transformers import AutoTokenizer

    run_dir = path if os.path.isdir(path) else os.path.dirname(os.path.dirname(os.path.abspath(path)))
    candidates = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step_*")))[::-1]
    candidates.append(os.path.join(run_dir, "base_model"))
    for candidate in candidates:
        if os.path.isfile(os.path.join(candidate, "tokenizer.json")):
            return AutoTokenizer.from_pretrained(candidate)
    return None


def cmd_show(args: argparse.Namespace) -> int:
    from reasoning.show import plot_run, plot_timeline, show_trajectories

    target = args.target
    for other in args.compare:
        if not os.path.isdir(other):
            raise ConfigError(f"--compare '{other}' is not a run directory")
    if not os.path.exists(target):
        raise ConfigError(f"'{target}' does not exist (expected a run directory or a rollouts .jsonl file)")
    tokenizer = _find_tokenizer(target)
    written = []
    try:
        if os.path.isdir(target):
            written.append(plot_run(target))
            if args.compare or _has_timeline(target):
                written.append(plot_timeline([target, *args.compare], args.out, first_step=args.from_step))
            rollouts = sorted(glob.glob(os.path.join(target, "rollouts", "*.jsonl")))
            for path in rollouts[:1] + rollouts[-1:] if len(rollouts) > 1 else rollouts:
                written.extend(show_trajectories(path, tokenizer, args.index))
        else:
            written.extend(show_trajectories(target, tokenizer, args.index))
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot draw '{target}': {exc}") from exc
    for path in written:
        print(path)
    return 0


def _has_timeline(run_dir: str) -> bool:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return False
    with open(path) as fh:
        return any("timeline/update_start" in line for line in fh)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlmrl", description="RL and reasoning fine-tuning for diffusion LMs",
                                     epilog="--traceback (anywhere): show the full trace of an error; --verbose (anywhere): "
                                            "the libraries' own progress bars, logs and warnings")
    verbs = parser.add_subparsers(dest="verb", required=True)
    sft = verbs.add_parser("sft", help="masked-diffusion supervised fine-tuning")
    sft.add_argument("config", help="YAML run config")
    sft.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    sft.set_defaults(func=cmd_sft)
    train = verbs.add_parser("train", help="RL over denoising trajectories")
    train.add_argument("config", help="YAML run config")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train.set_defaults(func=cmd_train)
    prefer = verbs.add_parser("prefer", help="preference training on (prompt, chosen, rejected) pairs: VRPO or DPO")
    prefer.add_argument("config", help="YAML run config")
    prefer.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    prefer.set_defaults(func=cmd_prefer)
    ev = verbs.add_parser("eval", help="evaluate a checkpoint on held-out problems")
    ev.add_argument("target", help="a checkpoint (runs/NAME/checkpoints/step_N), a model directory or a YAML config")
    ev.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. eval.decoding.steps=10)")
    ev.add_argument("--task", help="task name (default: the run's)")
    ev.add_argument("--data", help="a JSONL/parquet/CSV file of problems: for gsm8k (the default) and math500, or "
                                   "any built-in task (sudoku4 and countdown also in d1's layouts)")
    ev.add_argument("--prompt-field", help="field holding the problem text (default: question, or problem for math500)")
    ev.add_argument("--answer-field", help="field holding the reference answer (default: answer)")
    ev.add_argument("--protocol", help="a paper's evaluation: d1 (its benchmarks, splits, prompts, parsers and "
                                       "decoding; --data DIR holds the splits; docs/evaluation.md, 'd1's protocol')")
    ev.add_argument("--benchmarks", nargs="+", default=["gsm8k", "math500", "countdown", "sudoku"],
                    help="with --protocol d1: which of its benchmarks")
    ev.add_argument("--gen-lengths", type=_positive, nargs="+", default=[128, 256, 512],
                    help="with --protocol d1: the generation lengths (block 32, steps = length / 2)")
    ev.add_argument("--samples", type=_positive, default=1, help="answers per problem (pass@k)")
    ev.add_argument("--n", type=_positive, help="problems to evaluate (default: eval.n)")
    ev.add_argument("--output", help="directory for eval.json / eval.jsonl")
    ev.set_defaults(func=cmd_eval)
    smp = verbs.add_parser("sample", help="one answer from a checkpoint or model directory, with its trajectory")
    smp.add_argument("checkpoint", help="a dlmrl checkpoint or a model directory (e.g. a LLaDA/Dream snapshot)")
    smp.add_argument("--prompt", required=True, help="the prompt text (the task's template, e.g. 'sudoku 1030...')")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--output", help="directory for the trajectory and pictures (default RUN_DIR/samples)")
    smp.add_argument("overrides", nargs="*", help="key.sub=value overrides (eval.decoding.* sets the decoding)")
    smp.set_defaults(func=cmd_sample)
    exp = verbs.add_parser("export", help="merged RL weights in the base snapshot's original format")
    exp.add_argument("run", help="a run directory (its newest checkpoint) or a checkpoint directory")
    exp.add_argument("output", help="a new directory for the exported snapshot")
    exp.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    exp.set_defaults(func=cmd_export)
    verbs.add_parser("lm-eval", help="lm-evaluation-harness with the dlmrl model: lm-eval's own arguments "
                                     "(docs/evaluation.md, 'lm-evaluation-harness')")
    show = verbs.add_parser("show", help="pictures: a denoising trajectory, a run's curves")
    show.add_argument("target", help="a run directory or a rollouts .jsonl file")
    show.add_argument("--index", type=int, default=0, help="which trajectory of the file")
    show.add_argument("--compare", nargs="+", default=[], metavar="RUN_DIR",
                      help="more run directories drawn under the first in timeline.png (e.g. sync vs async)")
    show.add_argument("--out", help="where timeline.png goes (default: the run directory)")
    show.add_argument("--from-step", type=int, default=5, help="timeline.png: the first of the 8 steps drawn")
    show.set_defaults(func=cmd_show)
    return parser


OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[\w-]+)*=")


def split_overrides(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(the other arguments, the key.sub=value overrides). An override is a bare token of that
    shape anywhere on the line — never the value of an option (`--prompt "x = 3"`, `--prompt a=b`)."""
    takes_value = {option for sub in parser._subparsers._group_actions[0].choices.values()  # noqa: SLF001
                   for action in sub._actions if action.option_strings and action.nargs != 0  # noqa: SLF001
                   for option in action.option_strings}
    rest, overrides, value_next = [], [], False
    for token in argv:
        if not value_next and OVERRIDE.match(token):
            overrides.append(token)
        else:
            rest.append(token)
        value_next = not value_next and token in takes_value
    return rest, overrides


def expected_failure(exc: BaseException) -> str | None:
    """One line for a failure a user can fix (config, data, reward, checkpoint, OS), else None (a bug)."""
    from rewards import RewardError

    if isinstance(exc, (ConfigError, RewardError)):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" '{exc.filename}'" if exc.filename else ""
        return f"{exc.strerror or exc}{where}" if exc.strerror else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, (ValueError, KeyError)):
        return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return None


def lm_eval_command(argv: list[str]) -> int:
    """`dlmrl lm-eval ARGS`: lm-eval's own command line with the `dlmrl` model registered
    (reasoning/harness.py); ARGS are lm-eval's, passed through untouched."""
    try:
        import lm_eval.__main__ as lm_eval_main
    except ImportError:
        raise ConfigError("lm-evaluation-harness is not installed (pip install 'dlmrl[eval]')") from None
    import reasoning.harness  # noqa: F401 — registers the `dlmrl` model

    sys.argv = ["lm-eval", *argv]
    lm_eval_main.cli_evaluate()
    return 0


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    argv = sys.argv[1:] if argv is None else list(argv)
    show_trace = "--traceback" in argv
    set_verbose("--verbose" in argv or any(a.lower() in ("logging.verbose=true", "logging.verbose=1") for a in argv))
    argv = [a for a in argv if a not in ("--traceback", "--verbose")]
    if argv[:1] == ["lm-eval"]:  # lm-eval parses its own arguments (key=value ones too)
        verb, run = "lm-eval", lambda: lm_eval_command(argv[1:])
    else:
        parser = build_parser()
        rest, overrides = split_overrides(argv, parser)
        args = parser.parse_args(rest)
        if getattr(args, "overrides", None):
            parser.error(f"'{args.overrides[0]}' is not an override (expected key.sub=value)")
        args.overrides = overrides
        verb, run = args.verb, lambda: args.func(args)
    interrupts.install()
    try:
        return run()
    except (interrupts.Interrupted, KeyboardInterrupt) as exc:  # one line, no traceback
        stop = interrupts.as_interrupted(exc)
        print(f"dlmrl {verb}: {stop.message}", file=sys.stderr)
        return stop.code
    except Exception as exc:  # noqa: BLE001 — expected failures become one line; bugs keep their traceback
        message = expected_failure(exc)
        if message is None or show_trace:
            raise
        print(f"dlmrl {verb}: error: {' '.join(message.split())} (--traceback for details)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
