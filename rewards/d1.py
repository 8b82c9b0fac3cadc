"""d1's answer parsers (github.com/dllm-reasoning/d1, eval/parse_and_get_acc.py), as rewards.

`dlmrl eval --protocol d1` scores with these so its numbers sit next to the d1 / wd1 / SPG / IGPO
tables; registered as rewards too (`d1_gsm8k`, `d1_math`, `d1_countdown`, `d1_sudoku`), so an RL
run can train on exactly the scorer it is evaluated with. They follow d1's rules, quirks
included (written anew, not copied):

- gsm8k: the first \\boxed{...} holding a number, else the number in <answer>...</answer> (the
  last one); equal as floats to the number after the reference's "####" (d1 reads no minus sign).
- math: the last \\boxed{...} (else <answer>...</answer>), equal to the reference after the
  Hendrycks MATH normalisation (`normalize_math`); a normalisation that fails compares raw text.
- countdown: the last \\boxed{...} — the whole text when there is none — with LaTeX operators
  replaced and a trailing "= N" cut; it must use the given numbers exactly once and hit the
  target within 1e-5. Evaluated by the AST whitelist of rewards.verifiers, never by Python's eval.
- sudoku: the 16-digit grid after <answer> (d1's five patterns in order), padded / cut to 16;
  the score is the fraction of the puzzle's empty cells filled as in the solution. d1's table
  reports cells correct / cells empty over all puzzles (the protocol weights by empty cells).
"""

from __future__ import annotations

import re

from rewards.builtin import _text, register
from rewards.verifiers import UnsafeExpression, evaluate_equation


def last_boxed(text: str) -> str | None:
    """The last \\boxed{...} (or \\fbox{...}) with balanced braces; the text itself when there is
    none; None when the last one never closes. `\\boxed x` (a space) reads up to a `$`."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return text
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i] == "}" and depth == 0:
            return text[start:i + 1]
    return None


def unbox(text: str) -> str:
    """\\boxed{x} -> x, `\\boxed x` -> x; anything else is returned as it is."""
    if text.startswith("\\boxed "):
        return text[len("\\boxed "):]
    if text.startswith("\\boxed{") and text.endswith("}"):
        return text[len("\\boxed{"):-1]
    return text


def answer_tag(text: str) -> str | None:
    found = re.search(r"<answer>(.*?)</answer>", text, re.DOTALL)
    return found.group(1).strip() if found else None


# --- gsm8k ----------------------------------------------------------------------------

def gsm8k_reference(answer: str | float | int) -> float | None:
    """The number after GSM8K's "####" (commas dropped; a plain number is taken as it is)."""
    if isinstance(answer, (int, float)):
        return float(answer)
    found = re.search(r"####\s*\$?([\d,]+(?:\.\d+)?)", answer)
    if found:
        return float(found.group(1).replace(",", ""))
    try:
        return float(answer.replace(",", ""))
    except ValueError:
        return None


def _number_in(text: str, last: bool) -> float | None:
    try:
        return float(text)
    except ValueError:
        numbers = re.findall(r"-?\d+\.?\d*", text)
        return float(numbers[-1 if last else 0]) if numbers else None


def gsm8k_answer(completion: str) -> float | None:
    for boxed in re.findall(r"\\boxed{(.*?)}", completion):
        boxed = boxed.strip()
        if boxed and not re.fullmatch(r"\.+", boxed):
            value = _number_in(boxed, last=False)
            if value is not None:
                return value
    tagged = answer_tag(completion)
    return _number_in(tagged, last=True) if tagged else None


# --- math -----------------------------------------------------------------------------

def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1b -> \\frac{1}{b}, \\frac1{72} -> \\frac{1}{72}."""
    head, *rest = s.split("\\frac")
    out = head
    for part in rest:
        out += "\\frac"
        if part[0] == "{":  # an empty part raises, as d1's does
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, tail = part[0], part[1], part[2:]
        out += "{" + a + "}" + ("{" + b + "}" + tail if b != "{" else b + tail)
    return out


def _fix_sqrt(s: str) -> str:
    """\\sqrt3 -> \\sqrt{3}."""
    head, *rest = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (p if p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in rest)


def _fix_slash(s: str) -> str:
    """a/b of two integers -> \\frac{a}{b}."""
    parts = s.split("/")
    if len(parts) == 2 and re.fullmatch(r"-?\d+", parts[0]) and re.fullmatch(r"-?\d+", parts[1]) \
            and s == f"{int(parts[0])}/{int(parts[1])}":
        return "\\frac{" + str(int(parts[0])) + "}{" + str(int(parts[1])) + "}"
    return s


def normalize_math(s: str) -> str:
    """The Hendrycks MATH answer normalisation d1 uses; raises where it does (an IndexError on a
    bare `\\sqrt`, two `\\text{ ` units), and the caller then compares the raw strings."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # units on the right
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise ValueError("more than one unit")
        s = parts[0]
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:  # "k = 3" -> "3"
        s = s.split("=")[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_slash(s)


def math_equivalent(answer: str | None, reference: str | None) -> bool:
    if answer is None or reference is None:
        return answer is None and reference is None
    try:
        return normalize_math(answer) == normalize_math(reference)
    except (ValueError, IndexError):
        return answer == reference


def math_answer(completion: str) -> str | None:
    boxed = last_boxed(completion)
    answer = unbox(boxed) if boxed is not None else None
    return answer if answer else answer_tag(completion)


# --- countdown ------------------------------------------------------------------------

def countdown_equation(completion: str) -> str:
    boxed = last_boxed(completion)
    if boxed is None:  # a \boxed{ that never closes: the <answer> text, else everything
        tagged = answer_tag(completion)
        equation = completion if tagged is None else tagged
    else:
        equation = unbox(boxed)
    equation = equation.replace("\\div", "/").replace("\\times", "*").replace("\\cdot", "*")
    with_result = re.search(r"([0-9+\-*/() ]+)=[0-9. ]+", equation)
    return with_result.group(1).strip() if with_result else equation


def countdown_solved(completion: str, numbers: list[int], target: float) -> bool:
    equation = countdown_equation(completion)
    if sorted(int(n) for n in re.findall(r"\d+", equation)) != sorted(int(n) for n in numbers):
        return False
    if not re.match(r"^[\d+\-*/().\s]+$", equation):
        return False
    try:
        value, _ = evaluate_equation(equation)
    except UnsafeExpression:
        return False
    return abs(float(value) - float(target)) < 1e-5


# --- sudoku ---------------------------------------------------------------------------

SUDOKU_PATTERNS = (r"<answer>.*?```\s*([\d\s]+)```", r"<answer>(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|</answer>)",
                   r"</answer>\s*(.*?)(?:<\|eot_id\|>|<\|endoftext\|>|$)", r".*?(\d{16})\s*</answer>",
                   r"\b(\d{16})\b")


def sudoku_grid(completion: str) -> str:
    """d1's reading of the answer grid: the first pattern that matches something, whitespace
    dropped, padded with 0 or cut to 16 characters ('' when nothing matched)."""
    grid = ""
    for pattern in SUDOKU_PATTERNS:
        found = re.search(pattern, completion, re.DOTALL)
        if found and found.group(1).strip():
            grid = found.group(1).strip()
            break
    grid = re.sub(r"\s", "", grid)
    return (grid + "0" * 16)[:16] if grid else ""


def sudoku_cells(completion: str, puzzle: str, solution: str) -> tuple[int, int]:
    """(empty cells of the puzzle filled as in the solution, empty cells)."""
    empty = [i for i in range(16) if puzzle[i] == "0"]
    grid = sudoku_grid(completion)
    return (sum(grid[i] == solution[i] for i in empty) if grid else 0), len(empty)


# --- as rewards (TRL's signature) -----------------------------------------------------

@register("d1_gsm8k", in_process=True)
def d1_gsm8k(prompts, completions, answer, **kwargs) -> list[float]:
    parsed = [gsm8k_answer(_text(c)) for c in completions]
    return [float(p is not None and p == gsm8k_reference(a)) for p, a in zip(parsed, answer)]


@register("d1_math", in_process=True)
def d1_math(prompts, completions, answer, **kwargs) -> list[float]:
    return [float(math_equivalent(math_answer(_text(c)), a)) for c, a in zip(completions, answer)]


@register("d1_countdown", in_process=True)
def d1_countdown(prompts, completions, numbers, target, **kwargs) -> list[float]:
    return [float(countdown_solved(_text(c), n, t)) for c, n, t in zip(completions, numbers, target)]


@register("d1_sudoku", in_process=True)
def d1_sudoku(prompts, completions, puzzle, solution, **kwargs) -> list[float]:
    """The fraction of empty cells filled correctly (1.0: solved as the reference solution)."""
    scores = []
    for c, p, s in zip(completions, puzzle, solution):
        correct, empty = sudoku_cells(_text(c), p, s)
        scores.append(correct / empty if empty else 0.0)
    return scores
