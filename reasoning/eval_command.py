"""`dlmrl eval`: score a checkpoint (or a model directory, or a config's model) on held-out problems
with the task's own scorer, on a user's file (`--data FILE`), or by a paper's protocol
(`--protocol d1`, reasoning/protocols.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from reasoning.schema import ConfigError
from reasoning.targets import load_target, to_accelerator


def eval_protocol(args: argparse.Namespace) -> int:
    """`dlmrl eval TARGET --protocol d1`: a paper's benchmarks, prompts, parsers and decoding
    (reasoning/protocols.py) -> one table, a row per benchmark x gen length."""
    import torch

    from reasoning.protocols import check_protocol, markdown, read_splits, run_protocol
    from rollouts import make_policy

    for flag in ("task", "prompt_field", "answer_field"):
        if getattr(args, flag):
            raise ConfigError(f"--{flag.replace('_', '-')}: --protocol {args.protocol} fixes the benchmarks and "
                              f"their fields (--benchmarks picks among them)")
    check_protocol(args.protocol, args.benchmarks, args.gen_lengths)
    splits = read_splits(args.benchmarks, args.data)
    cfg, model, tokenizer, base = load_target(args.target, args.overrides)
    torch.set_num_threads(cfg.threads)
    sampled = any(o.startswith("eval.decoding.temperature=") for o in args.overrides)
    name = os.path.basename(os.path.normpath(args.target)) if os.path.isdir(args.target) else "model"
    out_dir = args.output or os.path.join(base, "eval", f"{args.protocol}_{name}")
    policy = make_policy(to_accelerator(model).eval(), tokenizer, cfg.model.shift_logits)
    summary = run_protocol(args.protocol, policy, tokenizer, splits, out_dir, gen_lengths=args.gen_lengths, n=args.n,
                           samples=args.samples, temperature=cfg.eval_decoding().temperature if sampled else 0.0,
                           batch_size=cfg.eval.batch_size, seed=cfg.seed, model=os.path.abspath(args.target))
    print(markdown(summary["rows"]), file=sys.stderr)
    print(f"wrote {out_dir}/{args.protocol}.md and {args.protocol}.json", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint (or a config's model) on held-out problems with the task's own scorer."""
    if args.protocol:
        return eval_protocol(args)
    import torch

    from reasoning.evaluate import evaluate
    from reasoning.tasks import get_task
    from rollouts import make_policy

    target = args.target
    cfg, model, tokenizer, base = load_target(target, args.overrides)
    name = os.path.basename(os.path.normpath(target)) if os.path.isdir(target) else "model"
    out_dir = args.output or os.path.join(base, "eval", name)
    data = cfg.data
    if args.task:
        data = dataclasses.replace(data, task=args.task)
    if args.data:
        from reasoning.tasks.files import FileTask

        name = args.task or "gsm8k"
        if isinstance(get_task(name), FileTask):  # gsm8k, math500: the fields are named on the command line
            task_args = {"path": args.data, "answer_field": args.answer_field or "answer"}
            if args.prompt_field:
                task_args["prompt_field"] = args.prompt_field
        elif args.prompt_field or args.answer_field:
            raise ConfigError(f"--prompt-field / --answer-field: task '{name}' reads its own fields from --data "
                              f"(docs/models.md, 'Tasks')")
        else:  # a built-in task reads its fields (and d1's layouts) from the file
            task_args = {"path": args.data}
        data = dataclasses.replace(data, task=name, task_args=task_args)
    torch.set_num_threads(cfg.threads)
    task = get_task(data.task)
    test = task.build(dataclasses.replace(data, train_size=0))["test"]
    from reasoning.evaluate import MAX_ANSWERS

    answers = min(args.n or cfg.eval.n, len(test)) * args.samples
    if answers > MAX_ANSWERS:
        raise ConfigError(f"--samples {args.samples}: {answers:,} answers exceed the {MAX_ANSWERS:,} an evaluation "
                          f"keeps a record of; lower --samples or --n")
    decoding = cfg.eval_decoding()
    if args.samples > 1 and decoding.temperature == 0:
        print("note: --samples > 1 with temperature 0 decodes identical answers; "
              "set eval.decoding.temperature=...", file=sys.stderr)
    policy = make_policy(to_accelerator(model).eval(), tokenizer, cfg.model.shift_logits)
    result = evaluate(policy, tokenizer, task, test, decoding, n=args.n or cfg.eval.n,
                      batch_size=cfg.eval.batch_size, seed=cfg.seed, progress=True, samples=args.samples,
                      chat_template=data.chat_template)
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
