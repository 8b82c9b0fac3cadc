'''`dlmrl eval TARGET --protocol d1`: the evaluation of d1 (Zhao et al. 2025, github.com/dllm-reasoning/d1,
eval/), which the wd1 / SPG / IGPO tables follow, so a number from here sits next to theirs.

What d1 does, and so what this does:
- benchmarks and splits: GSM8K test (1,319), MATH-500 test (500), Countdown-3 (d1's
  dataset/countdown_cd3_test.jsonl, 256) and 4x4 Sudoku (d1's dataset/4x4_test_sudoku.csv, 256 of
  its 500 drawn as d1's eval.py draws them: numpy seed 42, `choice(500, 256, replace=False)`);
- prompt: one user turn, the benchmark's system prompt + "\\n\\n" + the question, through the
  model's chat template with the generation prompt, then "<reasoning>" prefilled; tokenized as
  d1 does (`tokenizer(text)`, the tokenizer's own special tokens);
- decoding: gen length 128 / 256 / 512, block 32, steps = gen length / 2, greedy (temperature 0),
  low-confidence remasking (LLaDA's: the probability of the chosen token);
- scoring: d1's parsers (rewards/d1.py) on the canvas decoded as d1 decodes it (special tokens
  kept); Sudoku's accuracy is d1's: cells filled correctly / empty cells, over all puzzles.

Splits come from `--data DIR` (the file names below) or, for GSM8K and MATH-500, from the hub
through `datasets` (HF_HUB_OFFLINE=0). Differences from d1 that a reader should know: an answer
whose decoded blocks hold [EOS] stops there (d1 decodes every block; the text up to [EOS] is the
same, NFE is lower), and Countdown equations are evaluated by an AST whitelist, not Python's eval.
'''

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from reasoning.evaluate import evaluate
from reasoning.schema import ConfigError, shown, suggest
from reasoning.tasks.base import Task, row_field
from reasoning.tasks.files import read_file
from rollouts import DecodingConfig
from rollouts.decoding import resolve_confidence

GSM_SYSTEM_PROMPT = """You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the final answer in a \\boxed{}. 
Respond in the following format:
<reasoning>
Your reasoning here
</reasoning>
<answer>
\\boxed{...}
</answer>"""  # noqa: W291 — d1's prompt, its trailing space included

MATH_SYSTEM_PROMPT = GSM_SYSTEM_PROMPT.replace("\\boxed{}. \n", "\\boxed{}.\n") + '" \n'  # d1's, stray quote too

COUNTDOWN_SYSTEM_PROMPT = (
    "Using only the provided numbers, create an arithmetic expression that evaluates to exactly the provided "
    "target number. You may use the operations +, -, *, and / as needed, but each number must be used exactly "
    "once. Think step-by-step. After reasoning, provide only your final expression inside \\boxed{} tags without "
    "including an equals sign or the target number. For example: \\boxed{a + b * c}Respond in the following "
    "format:\n<reasoning>\nYour reasoning here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>")

SUDOKU_SYSTEM_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""

GEN_LENGTHS = (128, 256, 512)
BLOCK_LENGTH = 32
PREFILL = "<reasoning>"


def _gsm8k(row: dict, where: str) -> dict:
    return {"question": row_field(row, ("question",), where, "the problem text"),
            "answer": row_field(row, ("answer",), where, "GSM8K's solution ending in '#### N'")}


def _math(row: dict, where: str) -> dict:
    return {"question": row_field(row, ("problem",), where, "the problem text"),
            "answer": row_field(row, ("answer",), where, "the final answer")}


def _countdown(row: dict, where: str) -> dict:
    numbers = str(row_field(row, ("input",), where, "comma-separated numbers, e.g. '30,100,93'"))
    target = row_field(row, ("output",), where, "the target number")
    try:
        numbers_list, target = [int(n) for n in numbers.split(",")], int(target)
    except ValueError:
        raise ConfigError(f"{where}: field 'input' / 'output': expected integers, got {numbers!r} / "
                          f"{target!r}") from None
    return {"question": f"Numbers: {numbers_list}\nTarget: {target}", "numbers": numbers_list, "target": target}


def _sudoku(row: dict, where: str) -> dict:
    puzzle = str(row_field(row, ("Puzzle",), where, "16 digits, 0 for an empty cell"))
    solution = str(row_field(row, ("Solution",), where, "16 digits"))
    if (len(puzzle) != 16 or len(solution) != 16 or set(puzzle) - set("01234") or set(solution) - set("1234")
            or any(p != "0" and p != s for p, s in zip(puzzle, solution))):
        raise ConfigError(f"{where}: fields 'Puzzle' / 'Solution': expected 16 digits each, 0-4 in the puzzle "
                          f"(0 for an empty cell) and 1-4 in the solution, which keeps the puzzle's givens; got "
                          f"{shown(puzzle)} / {shown(solution)}")
    return {"question": f"Solve the following Sudoku puzzle: {puzzle}\n", "puzzle": puzzle, "solution": solution}


@dataclass(frozen=True)
class Benchmark:
    """One of d1's benchmarks: where its split is, how a row reads, the prompt and the scorer."""

    name: str
    files: tuple[str, ...]  # accepted names in --data DIR (the first is the one docs/evaluation.md names)
    hub: tuple[str, str | None] | None  # (dataset, config) of its test split on the hub, if it is there
    system_prompt: str
    reward: str  # rewards/d1.py
    subsample: int | None  # d1 evaluates this many, drawn with numpy seed 42 (None: all)
    read: Callable[[dict, str], dict]  # a row of the file and where it is -> our example (errors name both)

    def rows(self, data_dir: str | None) -> list[dict]:
        source, raw = self._load(data_dir)
        rows = [self.read(row, f"{source} row {i + 1}") for i, row in enumerate(raw)]
        if self.subsample and len(rows) >= self.subsample:  # as d1: np.random.seed(42) then choice (a permutation
            # when the file has exactly that many rows, as Countdown's 256)
            rows = [rows[i] for i in np.random.RandomState(42).choice(len(rows), self.subsample, replace=False)]
        return rows

    def _load(self, data_dir: str | None):
        if data_dir is not None:
            for name in self.files:
                path = os.path.join(data_dir, name)
                if os.path.isfile(path):
                    return f"data file '{path}'", read_file(path, key="--data")
            raise ConfigError(f"--data '{data_dir}': no {self.name} split (expected {' or '.join(self.files)}; "
                              f"docs/evaluation.md)")
        if self.hub is None:
            raise ConfigError(f"{self.name}: d1's split is the file dataset/{self.files[0]} of "
                              f"github.com/dllm-reasoning/d1 (not on the hub); put it in a directory and pass --data DIR")
        from datasets import load_dataset

        try:
            return f"hub dataset '{self.hub[0]}'", load_dataset(self.hub[0], self.hub[1], split="test")
        except Exception as exc:  # noqa: BLE001 — offline, missing, or refused: all mean "use --data"
            raise ConfigError(f"{self.name}: the hub dataset '{self.hub[0]}' could not be read "
                              f"({type(exc).__name__}; HF_HUB_OFFLINE=0 lets datasets download it); or pass --data "
                              f"DIR holding {self.files[0]}") from None


BENCHMARKS = {b.name: b for b in (
    Benchmark("gsm8k", ("gsm8k_test.jsonl", "gsm8k_test.parquet"), ("openai/gsm8k", "main"), GSM_SYSTEM_PROMPT,
              "d1_gsm8k", None, _gsm8k),
    Benchmark("math500", ("math500_test.jsonl", "math500_test.parquet"), ("HuggingFaceH4/MATH-500", None),
              MATH_SYSTEM_PROMPT, "d1_math", None, _math),
    Benchmark("countdown", ("countdown_cd3_test.jsonl",), None, COUNTDOWN_SYSTEM_PROMPT, "d1_countdown", 256,
              _countdown),
    Benchmark("sudoku", ("4x4_test_sudoku.csv",), None, SUDOKU_SYSTEM_PROMPT, "d1_sudoku", 256, _sudoku),
)}
PROTOCOLS = ("d1",)


class ScoredBy(Task):
    """A benchmark as `evaluate` sees it: its name and d1's scorer."""

    def __init__(self, benchmark: Benchmark):
        self.name, self.reward = benchmark.name, benchmark.reward


def d1_prompt(tokenizer, benchmark: Benchmark, question: str) -> list[int]:
    """d1's prompt ids: chat template over one user turn, then '<reasoning>' prefilled."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError("--protocol d1 prompts through the model's chat template, and this tokenizer has none")
    messages = [{"role": "user", "content": benchmark.system_prompt + "\n\n" + question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + PREFILL
    return tokenizer(text)["input_ids"]


def d1_decoding(gen_length: int, temperature: float = 0.0, block_length: int | None = BLOCK_LENGTH) -> DecodingConfig:
    """d1's decoding; a block-diffusion model (SDAR, LLaDA2) decodes in its own attention blocks."""
    return DecodingConfig(gen_length=gen_length, block_length=block_length, steps=gen_length // 2,
                          temperature=temperature, commit="low_confidence", confidence="auto")


def check_protocol(name: str, benchmarks: list[str], gen_lengths: list[int]) -> None:
    """Refuse a bad request before any model is loaded."""
    if name not in PROTOCOLS:
        raise ConfigError(f"--protocol: unknown protocol '{name}'{suggest(name, PROTOCOLS)} (known: "
                          f"{', '.join(PROTOCOLS)})")
    for bench in benchmarks:
        if bench not in BENCHMARKS:
            raise ConfigError(f"--benchmarks: unknown benchmark '{bench}'{suggest(bench, BENCHMARKS)} (d1's: "
                              f"{', '.join(BENCHMARKS)})")
    for length in gen_lengths:
        if length < BLOCK_LENGTH or length % BLOCK_LENGTH:
            raise ConfigError(f"--gen-lengths: {length} is not a multiple of d1's block length {BLOCK_LENGTH}")


def read_splits(benchmarks: list[str], data_dir: str | None) -> dict[str, list[dict]]:
    """Every benchmark's test rows (d1's subsample), all read before anything is decoded."""
    if data_dir is not None and not os.path.isdir(data_dir):
        raise ConfigError(f"--data '{data_dir}': with --protocol, expected a directory holding the splits "
                          f"({', '.join(BENCHMARKS[b].files[0] for b in benchmarks)})")
    return {bench: BENCHMARKS[bench].rows(data_dir) for bench in benchmarks}


def run_protocol(name: str, policy, tokenizer, splits: dict[str, list[dict]], out_dir: str, *, gen_lengths: list[int],
                 n: int | None, samples: int, temperature: float, batch_size: int, seed: int, model: str) -> dict:
    """Every benchmark x gen length -> one row of the table (written as NAME.md and NAME.json, with
    each row's answers in NAME_BENCHMARK_LENGTH.jsonl)."""
    os.makedirs(out_dir, exist_ok=True)
    table = []
    for bench, rows in splits.items():
        benchmark, rows = BENCHMARKS[bench], rows[:n]
        encode = lambda row, b=benchmark: d1_prompt(tokenizer, b, row["question"])  # noqa: E731
        for length in gen_lengths:
            decoding = d1_decoding(length, temperature, policy.attention_block or BLOCK_LENGTH)
            start = time.perf_counter()
            result = evaluate(policy, tokenizer, ScoredBy(benchmark), rows, decoding, n=len(rows),
                              batch_size=batch_size, seed=seed, samples=samples, progress=True, encode=encode,
                              decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=False))
            seconds = time.perf_counter() - start
            table.append(table_row(bench, length, rows, result, seconds, decoding, samples,
                                   confidence=resolve_confidence(policy, decoding)))
            with open(os.path.join(out_dir, f"{name}_{bench}_{length}.jsonl"), "w") as fh:
                fh.writelines(json.dumps(record) + "\n" for record in result.records)
    summary = {"protocol": name, "model": model, "rows": table}
    with open(os.path.join(out_dir, f"{name}.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as fh:
        fh.write(markdown(table))
    return summary


def table_row(bench: str, length: int, rows: list[dict], result, seconds: float, decoding: DecodingConfig,
              samples: int, confidence: str | None = None) -> dict:
    """One row of the table; `confidence` is the measure "auto" resolved to (LLaDA: chosen_prob)."""
    accuracy = result.accuracy
    if bench == "sudoku":  # d1: cells correct / empty cells over all puzzles (each record's reward is its share)
        empty = [sum(ch == "0" for ch in rows[r["index"]]["puzzle"]) for r in result.records]
        accuracy = sum(r["reward"] * e for r, e in zip(result.records, empty)) / max(sum(empty), 1)
    answers = len(result.records)
    return {"benchmark": bench, "gen_length": length, "n": result.n, "samples": samples, "accuracy": accuracy,
            **{f"pass@{k}": v for k, v in result.pass_at_k.items()}, "nfe": result.mean_steps,
            "answers_per_s": answers / max(seconds, 1e-9), "seconds": seconds,
            "decoding": {**dataclasses.asdict(decoding), "confidence": confidence or decoding.confidence}}


def markdown(table: list[dict]) -> str:
    passes = sorted({key for row in table for key in row if key.startswith("pass@")}, key=lambda k: int(k[5:]))
    head = ["benchmark", "gen length", "n", "accuracy %", *passes, "NFE", "answers/s", "block", "steps",
            "temperature", "remasking"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        d = row["decoding"]
        cells = [row["benchmark"], row["gen_length"], row["n"], f"{100 * row['accuracy']:.1f}",
                 *[f"{100 * row[p]:.1f}" if p in row else "" for p in passes], f"{row['nfe']:.1f}",
                 f"{row['answers_per_s']:.2f}", d["block_length"], d["steps"], d["temperature"],
                 f"{d['commit']} ({d['confidence']})"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
