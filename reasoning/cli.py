"""`dlmrl <verb> CONFIG.yaml [key.sub=value ...]` — the command-line entry point."""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_environment()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"dlmrl {args.verb}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
