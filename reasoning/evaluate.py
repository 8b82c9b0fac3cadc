"""Held-out evaluation: decode, then score with the task's own scorer (the RL reward)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from reasoning.data import decode_completion, encode_prompt
from rollouts import DecodingConfig, DiffusionPolicy, sample, sample_seed


@dataclass
class EvalResult:
    task: str
    n: int
    accuracy: float
    mean_steps: float  # forward passes per answer
    tokens_per_s: float
    metrics: dict[str, float] = field(default_factory=dict)  # task extras, e.g. cell_accuracy
    records: list[dict] = field(default_factory=list)  # one per example

    def summary(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/acc": self.accuracy, f"{prefix}/mean_steps": self.mean_steps}
        out.update({f"{prefix}/{k}": v for k, v in self.metrics.items()})
        return out


def answer_length(answer: torch.Tensor, eos_id: int) -> int:
    """Tokens up to and including the first [EOS] (the whole canvas if there is none)."""
    return int((answer != eos_id).cumprod(0).sum()) + int((answer == eos_id).any())


def evaluate(policy: DiffusionPolicy, tokenizer, task, dataset: Dataset, decoding: DecodingConfig,
             n: int, batch_size: int, seed: int = 0, progress: bool = False) -> EvalResult:
    """Greedy or sampled decoding of the first `n` examples; accuracy = mean task score."""
    was_training = policy.model.training
    policy.model.eval()
    examples = dataset.select(range(min(n, len(dataset))))
    records, extras = [], {}
    passes, tokens, start = 0, 0, time.perf_counter()
    bar = tqdm(total=len(examples), desc=f"eval {task.name}", disable=not progress, leave=False)
    for lo in range(0, len(examples), batch_size):
        rows = examples.select(range(lo, min(lo + batch_size, len(examples))))
        prompts = [encode_prompt(tokenizer, p) for p in rows["prompt"]]
        seeds = [sample_seed(seed, lo + i, 0) for i in range(len(rows))]
        for row, traj in zip(rows, sample(policy, prompts, decoding, seeds)):
            answer = torch.as_tensor(traj.final_tokens)
            passes += traj.forward_passes
            completion = decode_completion(tokenizer, answer)
            reward = task.score(completion, row)
            for key, value in task.metrics(completion, row).items():
                extras[key] = extras.get(key, 0.0) + value
            tokens += answer_length(answer, tokenizer.eos_token_id)
            records.append({"prompt": row["prompt"], "completion": completion, "reward": reward,
                            "correct": reward >= 1.0, "steps": traj.forward_passes})
        bar.update(len(rows))
    bar.close()
    policy.model.train(was_training)
    count = max(len(records), 1)
    return EvalResult(
        task=task.name, n=len(records), accuracy=sum(r["correct"] for r in records) / count,
        mean_steps=passes / count, tokens_per_s=tokens / max(time.perf_counter() - start, 1e-9),
        metrics={k: v / count for k, v in extras.items()}, records=records,
    )
