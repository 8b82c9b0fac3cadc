"""`dlmrl <verb> CONFIG.yaml [key.sub=value ...]` — the command-line entry point."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

from reasoning.schema import ConfigError


def _quiet_environment() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights and data never come from a hub at run time


def cmd_sft(args: argparse.Namespace) -> int:
    from reasoning.config import load_config
    from reasoning.sft import run_sft

    cfg = load_config(args.config, args.overrides)
    result = run_sft(cfg)
    print(json.dumps(result))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from reasoning.config import load_config
    from reasoning.rl import run_rl

    cfg = load_config(args.config, args.overrides)
    result = run_rl(cfg)
    print(json.dumps(result))
    return 0


def _load_run_checkpoint(path: str, overrides: list[str]):
    """(config, model, tokenizer, run_dir) for a checkpoint: the config is its run's config.yaml
    (runs/NAME/checkpoints/step_N -> runs/NAME/config.yaml) with the command-line overrides."""
    import torch

    from reasoning.checkpoint import is_checkpoint, load_checkpoint
    from reasoning.config import load_config

    if not (os.path.isdir(path) and is_checkpoint(path)):
        raise ConfigError(f"'{path}' is not a dlmrl checkpoint directory (no trainer_state.json)")
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    run_config = os.path.join(run_dir, "config.yaml")
    cfg = load_config(run_config if os.path.isfile(run_config) else None, overrides, saved_by_run=True)
    model, tokenizer, _ = load_checkpoint(path, getattr(torch, cfg.model.dtype), cfg.model.family,
                                          cfg.model.trust_remote_code)
    return cfg, model, tokenizer, run_dir


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint (or a config's model) on held-out problems with the task's own scorer."""
    import dataclasses

    import torch

    from reasoning.config import load_config
    from reasoning.evaluate import evaluate
    from reasoning.modeling import load_model
    from reasoning.tasks import get_task
    from rollouts import make_policy

    target = args.target
    if os.path.isdir(target):
        cfg, model, tokenizer, run_dir = _load_run_checkpoint(target, args.overrides)
        out_dir = args.output or os.path.join(run_dir, "eval", os.path.basename(os.path.normpath(target)))
    elif os.path.isfile(target):
        cfg = load_config(target, args.overrides)
        model, tokenizer = load_model(cfg.model)
        out_dir = args.output or os.path.join(cfg.run_dir, "eval", "model")
    else:
        raise ConfigError(f"'{target}' is neither a checkpoint directory nor a config file")
    data = cfg.data
    if args.task:
        data = dataclasses.replace(data, task=args.task)
    if args.data:
        task_args = {"path": args.data, "answer_field": args.answer_field}
        if args.prompt_field:
            task_args["prompt_field"] = args.prompt_field
        data = dataclasses.replace(data, task=args.task or "gsm8k", task_args=task_args)
    torch.set_num_threads(cfg.threads)
    task = get_task(data.task)
    test = task.build(dataclasses.replace(data, train_size=0))["test"]
    decoding = cfg.eval_decoding()
    if args.samples > 1 and decoding.temperature == 0:
        print("note: --samples > 1 with temperature 0 decodes identical answers; "
              "set eval.decoding.temperature=...", file=sys.stderr)
    policy = make_policy(model.eval(), tokenizer, cfg.model.shift_logits)
    result = evaluate(policy, tokenizer, task, test, decoding, n=args.n or cfg.eval.n,
                      batch_size=cfg.eval.batch_size, seed=cfg.seed, progress=True, samples=args.samples)
    summary = {"task": task.name, "n": result.n, "accuracy": result.accuracy,
               **{f"pass@{k}": v for k, v in result.pass_at_k.items()},
               "mean_steps": result.mean_steps, "tokens_per_s": result.tokens_per_s, "samples": args.samples,
               "decoding": dataclasses.asdict(decoding), "checkpoint": os.path.abspath(target), **result.metrics}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "eval.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(out_dir, "eval.jsonl"), "w") as fh:
        for record in result.records:
            fh.write(json.dumps(record) + "\n")
    print(f"{task.name}: accuracy {result.accuracy:.4f} on {result.n} problems "
          f"({result.mean_steps:.1f} forwards per answer); wrote {out_dir}/eval.json", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """One answer from a checkpoint, with its trajectory saved as JSONL + pictures."""
    from reasoning.data import decode_completion, encode_prompt
    from reasoning.show import show_trajectories
    from rollouts import make_policy, sample, save_jsonl

    cfg, model, tokenizer, run_dir = _load_run_checkpoint(args.checkpoint, args.overrides)
    policy = make_policy(model.eval(), tokenizer, cfg.model.shift_logits)
    trajectory = sample(policy, [encode_prompt(tokenizer, args.prompt)], cfg.eval_decoding(), seeds=[args.seed])[0]
    completion = decode_completion(tokenizer, trajectory.final_tokens)
    out_dir = args.output or os.path.join(run_dir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"sample_{args.seed}.jsonl")
    save_jsonl([trajectory], path)
    pictures = show_trajectories(path, tokenizer)
    print(json.dumps({"prompt": args.prompt, "completion": completion, "steps": trajectory.num_steps,
                      "forward_passes": trajectory.forward_passes, "remasks": trajectory.num_remasks,
                      "trajectory": path, "pictures": pictures}))
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
    from reasoning.show import plot_run, show_trajectories

    target = args.target
    if not os.path.exists(target):
        raise ConfigError(f"'{target}' does not exist (expected a run directory or a rollouts .jsonl file)")
    tokenizer = _find_tokenizer(target)
    written = []
    try:
        if os.path.isdir(target):
            written.append(plot_run(target))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlmrl", description="RL and reasoning fine-tuning for diffusion LMs")
    verbs = parser.add_subparsers(dest="verb", required=True)
    sft = verbs.add_parser("sft", help="masked-diffusion supervised fine-tuning")
    sft.add_argument("config", help="YAML run config")
    sft.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    sft.set_defaults(func=cmd_sft)
    train = verbs.add_parser("train", help="RL over denoising trajectories")
    train.add_argument("config", help="YAML run config")
    train.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    train.set_defaults(func=cmd_train)
    ev = verbs.add_parser("eval", help="evaluate a checkpoint on held-out problems")
    ev.add_argument("target", help="a checkpoint directory (runs/NAME/checkpoints/step_N) or a YAML config")
    ev.add_argument("overrides", nargs="*", help="key.sub=value overrides (e.g. eval.decoding.steps=10)")
    ev.add_argument("--task", help="task name (default: the run's)")
    ev.add_argument("--data", help="a JSONL/parquet file of problems (file-backed task, default gsm8k)")
    ev.add_argument("--prompt-field", help="field holding the problem text (default: question, or problem for math500)")
    ev.add_argument("--answer-field", default="answer", help="field holding the reference answer")
    ev.add_argument("--samples", type=int, default=1, help="answers per problem (pass@k)")
    ev.add_argument("--n", type=int, help="problems to evaluate (default: eval.n)")
    ev.add_argument("--output", help="directory for eval.json / eval.jsonl")
    ev.set_defaults(func=cmd_eval)
    smp = verbs.add_parser("sample", help="one answer from a checkpoint, with its trajectory")
    smp.add_argument("checkpoint", help="a checkpoint directory")
    smp.add_argument("--prompt", required=True, help="the prompt text (the task's template, e.g. 'sudoku 1030...')")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--output", help="directory for the trajectory and pictures (default RUN_DIR/samples)")
    smp.add_argument("overrides", nargs="*", help="key.sub=value overrides (eval.decoding.* sets the decoding)")
    smp.set_defaults(func=cmd_sample)
    show = verbs.add_parser("show", help="pictures: a denoising trajectory, a run's curves")
    show.add_argument("target", help="a run directory or a rollouts .jsonl file")
    show.add_argument("--index", type=int, default=0, help="which trajectory of the file")
    show.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    argv = sys.argv[1:] if argv is None else list(argv)
    # key.sub=value overrides may come anywhere, also after --options
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    args = build_parser().parse_args([a for a in argv if a not in overrides])
    args.overrides = overrides
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"dlmrl {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
