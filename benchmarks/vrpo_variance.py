"""How much VRPO lowers the variance of the preference score against naive DPO on ELBO estimates.

    python benchmarks/vrpo_variance.py [--pairs 16] [--seeds 100] [--draws 1 4 16] [--noise 0.02]

The model is the sudoku4 SFT start of benchmarks/objectives.py (trained once and reused) as the
reference; the policy is that model with every weight perturbed by `--noise` times its tensor's
std (a policy some updates away from its reference). The pairs are sudoku4 pairs built as
`dlmrl prefer` builds them (chosen = the reference solution, rejected = another puzzle's solution).
For each estimator and number of ELBO draws n, the pair score β[(B̂_θ − B̂_ref)(y_w) − (B̂_θ −
B̂_ref)(y_l)] (β = 1) is computed with `--seeds` seeds; reported: its variance across seeds,
averaged over pairs, and its mean (both estimators estimate the same quantity). Last line: JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from reasoning.checkpoint import load_checkpoint  # noqa: E402
from reasoning.prefer import batch_of, reference_of  # noqa: E402
from reasoning.preference import preference_loss  # noqa: E402
from reasoning.preference_data import pairs_from_task, tokenize_pairs  # noqa: E402
from reasoning.tasks import DataConfig, get_task  # noqa: E402
from rollouts import make_policy  # noqa: E402

from objectives import TARGETS, sft_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--draws", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--noise", type=float, default=0.02)
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint, start = sft_checkpoint("sudoku4", TARGETS["sudoku4"])
    reference, tokenizer, _ = load_checkpoint(checkpoint)
    model = copy.deepcopy(reference)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(args.noise * p.std() * torch.randn(p.shape, generator=generator))
    policy = make_policy(model.eval(), tokenizer)
    task = get_task("sudoku4")
    examples = task.build(DataConfig(task="sudoku4", train_size=0, test_size=args.pairs))["test"]
    pairs = tokenize_pairs(pairs_from_task(task, examples), tokenizer, 20, "auto", "sudoku4")
    batch = batch_of(pairs[:])
    rows = {}
    for draws in args.draws:
        for estimator in ("vrpo", "dpo"):
            scores = []
            for seed in range(args.seeds):
                with torch.no_grad():
                    _, stats = preference_loss(policy, reference_of(policy, False, reference.eval()), batch,
                                               policy.ids.stop, 1.0, draws, estimator,
                                               torch.Generator().manual_seed(seed))
                scores.append((stats.chosen_reward - stats.rejected_reward).numpy())
            scores = np.stack(scores)  # (seeds, pairs)
            rows[f"{estimator}_draws{draws}"] = {"variance": float(scores.var(0).mean()),
                                                 "mean": float(scores.mean()), "pairs": int(scores.shape[1])}
        rows[f"ratio_draws{draws}"] = rows[f"dpo_draws{draws}"]["variance"] / rows[f"vrpo_draws{draws}"]["variance"]
        print(f"{draws} draws: variance VRPO {rows[f'vrpo_draws{draws}']['variance']:.4g}, "
              f"DPO {rows[f'dpo_draws{draws}']['variance']:.4g} ({rows[f'ratio_draws{draws}']:.1f}x)", file=sys.stderr)
    print(json.dumps({"start": start, "noise": args.noise, "seeds": args.seeds, "results": rows,
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores, 1 thread"}))


if __name__ == "__main__":
    main()
