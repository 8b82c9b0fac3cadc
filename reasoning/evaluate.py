"""Held-out evaluation: decode, then score with the task's own scorer (the RL reward)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from reasoning.data import decode_completion, encode_prompt, stop_index
from reasoning.output import is_terminal
from rollouts import DecodingConfig, DiffusionPolicy, sample, sample_seed


@dataclass
class EvalResult:
    task: str
    n: int
    accuracy: float
    mean_steps: float  # forward passes per answer
    tokens_per_s: float
    pass_at_k: dict[int, float] = field(default_factory=dict)  # with samples > 1: any of k samples correct
    metrics: dict[str, float] = field(default_factory=dict)  # task extras, e.g. cell_accuracy
    records: list[dict] = field(default_factory=list)  # one per example

    def summary(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/acc": self.accuracy, f"{prefix}/mean_steps": self.mean_steps}
        out.update({f"{prefix}/pass@{k}": v for k, v in self.pass_at_k.items()})
        out.update({f"{prefix}/{k}": v for k, v in self.metrics.items()})
        return out


MAX_ANSWERS = 1_000_000  # answers one evaluation decodes and keeps a record of


def answer_length(answer: torch.Tensor, stop: tuple[int, ...]) -> int:
    """Tokens up to and including the first stop token (the whole canvas if there is none)."""
    return min(stop_index(answer, stop) + 1, len(answer))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def evaluate(policy: DiffusionPolicy, tokenizer, task, dataset: Dataset | list[dict], decoding: DecodingConfig,
             n: int, batch_size: int, seed: int = 0, progress: bool = False, samples: int = 1,
             chat_template: str = "auto", encode: Callable[[dict], list[int]] | None = None,
             decode: Callable[[torch.Tensor], str] | None = None) -> EvalResult:
    """Decode the first `n` examples (`samples` answers each); accuracy = fraction of answers
    the task scores 1.0, pass@k over each example's samples. Sample k of example i always uses
    the seed `sample_seed(seed, i, k)`, so results do not depend on the batch size.
    `encode` (row -> prompt ids) and `decode` (answer ids -> the text scored) replace the
    defaults (the row's prompt through the chat template; the text before the stop token),
    for protocols that prompt and parse their own way (reasoning/protocols.py)."""
    was_training = policy.model.training
    policy.model.eval()
    examples = dataset[:n] if isinstance(dataset, list) else dataset.select(range(min(n, len(dataset))))
    encode = encode or (lambda row: encode_prompt(tokenizer, row["prompt"], chat_template))
    decode = decode or (lambda answer: decode_completion(tokenizer, answer, policy.ids.stop))
    total = len(examples) * samples
    if total > MAX_ANSWERS:
        raise ValueError(f"an evaluation of {len(examples)} problems x {samples} samples = {total:,} answers exceeds "
                         f"the {MAX_ANSWERS:,} it keeps (one record each); lower --samples or eval.n")
    records, extras = [], {}
    passes, tokens, start = 0, 0, time.perf_counter()
    bar = tqdm(total=total, desc=f"eval {task.name}", disable=not (progress and is_terminal()), leave=False)
    for lo in range(0, total, batch_size):
        chunk = [divmod(j, samples) for j in range(lo, min(lo + batch_size, total))]  # (example, sample), lazily
        rows = [examples[i] for i, _ in chunk]
        prompts = [encode(row) for row in rows]
        seeds = [sample_seed(seed, i, k) for i, k in chunk]
        for (index, k), row, traj in zip(chunk, rows, sample(policy, prompts, decoding, seeds)):
            answer = torch.as_tensor(traj.final_tokens)
            passes += traj.forward_passes
            completion = decode(answer)
            reward = task.score(completion, row)
            for key, value in task.metrics(completion, row).items():
                extras[key] = extras.get(key, 0.0) + value
            tokens += answer_length(answer, policy.ids.stop)
            records.append({"index": index, "sample": k, "prompt": row.get("prompt", row.get("question")),
                            "completion": completion,
                            "reward": reward, "correct": reward >= 1.0, "steps": traj.forward_passes})
        bar.update(len(rows))
    bar.close()
    policy.model.train(was_training)
    count = max(len(records), 1)
    passes_at = {}
    if samples > 1:
        correct = [0] * len(examples)
        for r in records:
            correct[r["index"]] += r["correct"]
        for k in sorted({1, samples}):
            passes_at[k] = sum(pass_at_k(samples, c, k) for c in correct) / max(len(examples), 1)
    return EvalResult(
        task=task.name, n=len(examples), accuracy=sum(r["correct"] for r in records) / count,
        mean_steps=passes / count, tokens_per_s=tokens / max(time.perf_counter() - start, 1e-9),
        pass_at_k=passes_at, metrics={k: v / count for k, v in extras.items()}, records=records,
    )


def evaluate_and_log(policy: DiffusionPolicy, tokenizer, task, cfg, logger, step: int, n: int | None = None,
                     dataset: Dataset | None = None, announce: bool = True) -> dict[str, float]:
    """The held-out evaluation SFT and RL both run: the config's eval decoding, `n` (default
    eval.n) problems, logged as eval/<task>/* at `step` and, if `announce`, printed on one line."""
    with torch.no_grad():
        result = evaluate(policy, tokenizer, task, dataset, cfg.eval_decoding(), n or cfg.eval.n,
                          cfg.eval.batch_size, seed=cfg.seed, progress=cfg.logging.progress,
                          chat_template=cfg.data.chat_template)
    metrics = result.summary(f"eval/{task.name}")
    logger.log(step, metrics)
    if announce:
        tqdm.write(f"step {step}: eval {task.name} acc {result.accuracy:.3f} "
                   + " ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items() if not k.endswith("/acc")))
    return metrics
