"""The code judge: a verdict the judged code cannot reach.

The solution and the tests run in two separate sandboxes (rewards.sandbox: their own namespaces and
uids). The solution's sandbox (rewards/judge_answerer.py) only answers questions — "call f with
these arguments", "attribute x of object 3", "the next items of iterator 4" — each answer data in
the shared encoding (rewards/judge_codec.py) or a handle to an object that stays there. The tests
run in the judge's sandbox (rewards/judge_verdicts.py), which decides each test's pass/fail. This
process starts both, relays lines between them and collects the verdicts. The reward is
passed / total, in [0, 1].

Nothing the solution says about itself is believed:
  - **what the tests see is read from the solution's source**, here, with `ast`: its module-level
    `import m`, `import m as a` and `from m import x` statements name the real modules and attributes
    the judge's side imports for the tests — only modules of ALLOWED_MODULES, and a `from` import only
    under its own name (`from m import x as y` is not exposed, so `MagicMock as isclose` or
    `or_ as isclose` stand in for nothing). No object's `__module__` / `__qualname__` is asked.
    Mocks, `__main__`, this project's modules and everything else outside the list are never
    imported for the tests: a test that needs them gets plain Python's NameError;
  - objects the solution defined reach the tests only under the names the task exposes: its entry
    points (HumanEval's `entry_point`), every name a test calls (`f(...)`), and every other name a
    test uses (`map(is_prime, xs)`) unless that name is a standard-library module (so a solution's
    own `math` is not the tests' `math`). Names that shadow a builtin or start with `__` never reach
    the tests;
  - the answering code runs before the solution, keeps everything it uses out of the solution's
    reach, and seals every answer with a MAC over (sequence number, question, answer) whose key the
    solution cannot read (judge_answerer.py says how). This process drops every line whose seal does
    not verify. So a solution that replaces the answering side's `encode`, writes forged answers to
    its channel or feeds the answering loop questions of its own makes its answers missing, never
    different;
  - everything that crosses is bounded: a line at most LINE_BYTES, a value at most MAX_DEPTH deep,
    MAX_ITEMS values and MAX_BYTES of text (judge_codec.py). A violation fails that answer's test
    with a reason; nothing a solution writes is parsed here, so nothing it writes can raise here.

Results cross by value for every standard type with an equality a test can use (None, bool, int
of any size, float with nan and inf, complex, str, bytes, list, tuple, dict, set, frozenset, range,
Counter / defaultdict / OrderedDict / deque; a subclass as its base type's value, so its own `__eq__`
cannot lie). `math.nan` itself stays `math.nan`, so `[math.nan] == [math.nan]` keeps plain Python's
identity-then-equality verdict. Anything else is a handle: calls, attributes, `len`, `bool`,
indexing, `in`, `str` and iteration are asked of the solution, iterators lazily (judge_verdicts.py),
two handles compare with the solution's own `==`, and a handle never equals a value the test wrote.
The whole judging of one answer runs under one wall-clock deadline (`SandboxLimits.wall_s`).
"""

from __future__ import annotations

import ast
import binascii
import dataclasses
import functools
import hashlib
import hmac
import json
import marshal
import os
import secrets
import sys
import time
from typing import Sequence

from rewards.judge_codec import MAX_BYTES
from rewards.sandbox import SandboxLimits, SandboxProcess

HERE = os.path.dirname(os.path.abspath(__file__))
LINE_BYTES = MAX_BYTES * 3 // 2 + (1 << 20)  # one answer line: a MAX_BYTES value in base64 with its tags
# The modules whose real objects a solution's imports may give the tests (the standard library that
# MBPP / HumanEval solutions use; nothing that can stand in for a value, run programs or mock).
ALLOWED_MODULES = frozenset({
    "array", "bisect", "calendar", "cmath", "collections", "copy", "datetime", "decimal", "enum",
    "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math", "numbers", "operator",
    "random", "re", "statistics", "string", "struct", "sys", "textwrap", "typing", "unicodedata"})


@dataclasses.dataclass
class Verdict:
    passed: bool
    reason: str | None = None  # why an answer a test needed was missing or refused


@functools.lru_cache(maxsize=None)
def _side(name: str) -> str:
    """The text a sandbox runs: the codec, then one side's script."""
    with open(os.path.join(HERE, "judge_codec.py")) as codec, open(os.path.join(HERE, name)) as side:
        return codec.read() + "\n" + side.read()


def solution_imports(source: str) -> dict[str, list]:
    """{name: [module, attribute or None or "*"]}: what the solution's module-level import statements
    bind, for allowed modules only (see the module doc). Read from the source, never from the process."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    bound: dict[str, list] = {}
    for node in _module_level(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ALLOWED_MODULES:
                    if alias.asname:
                        bound[alias.asname] = [alias.name, None]
                    else:
                        top = alias.name.split(".")[0]
                        bound[top] = [top, None]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] not in ALLOWED_MODULES:
                continue
            for alias in node.names:
                if alias.name == "*":
                    bound["*" + node.module] = [node.module, "*"]
                elif alias.asname in (None, alias.name):
                    bound[alias.name] = [node.module, alias.name]
    return bound


def _module_level(body):
    """Statements run when the module loads: the body and what if / try / with / loops at that level hold."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
            for field in ("body", "orelse", "finalbody"):
                yield from _module_level(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                yield from _module_level(handler.body)


def exposed_names(tests: Sequence[str], entry_points: Sequence[str] | None = None) -> set[str]:
    """The solution's names that may reach the tests: entry points, every name a test calls, and
    every other name a test uses that is not a standard-library module. A test that does not parse
    names nothing (it will fail anyway)."""
    names = set(entry_points or ())
    for test in tests:
        try:
            tree = ast.parse(test)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names.add(node.func.id)
            elif isinstance(node, ast.Name) and node.id not in sys.stdlib_module_names:
                names.add(node.id)
    return names


def judge(source: str, tests: Sequence[str], limits: SandboxLimits | None = None,
          entry_points: Sequence[str] | None = None) -> list[bool]:
    """Which of `tests` pass against `source`, decided in the judge's sandbox (see the module doc)."""
    return [v.passed for v in judge_report(source, tests, limits, entry_points)]


def judge_report(source: str, tests: Sequence[str], limits: SandboxLimits | None = None,
                 entry_points: Sequence[str] | None = None) -> list[Verdict]:
    """Each test's verdict with the reason an answer was missing. A test with no verdict by the
    deadline (`limits.wall_s` for everything) has failed."""
    limits = limits or SandboxLimits()
    tests = [str(t) for t in tests]
    deadline = time.monotonic() + limits.wall_s
    verdicts: dict[int, Verdict] = {}
    solution = judge_box = None
    reason = "the sandbox could not start"
    try:
        key = secrets.token_bytes(32)
        # no /proc, and room (file size, tmpfs) for the execute-only interpreter copy (about 7 MB)
        sealed = dataclasses.replace(limits, proc=False, file_mb=max(limits.file_mb, 8))
        solution = SandboxProcess(_side("judge_answerer.py"), sealed)
        solution.send(key.hex())
        solution.send(binascii.b2a_base64(marshal.dumps(str(source), 4), newline=False).decode())
        hello = _sealed(solution, key, 0, "", deadline)
        reason = "the solution did not answer"
        if hello is None:
            return [Verdict(False, reason) for _ in tests]
        judge_box = SandboxProcess(_side("judge_verdicts.py"), limits)
        judge_box.send(json.dumps({"tests": tests, "imports": solution_imports(str(source)),
                                   "exposed": sorted(exposed_names(tests, entry_points))}))
        judge_box.send(hello)
        seq = 0
        reason = "no verdict before the deadline"
        while True:
            line = judge_box.receive(deadline, LINE_BYTES)
            if line is None:
                break
            if line.startswith("? "):  # a question for the solution: relay it, and its sealed answer
                seq += 1
                question = line[2:]
                answer = _sealed(solution, key, seq, question, deadline) if solution.send(f"{seq} {question}") else None
                judge_box.send(answer if answer is not None else "x no sealed answer before the deadline")
                continue
            message = _json(line)
            if message.get("done"):
                break
            index = message.get("test")
            if isinstance(index, int) and 0 <= index < len(tests) and index not in verdicts:
                why = message.get("reason")
                verdicts[index] = Verdict(message.get("passed") is True, str(why)[:200] if why else None)
    except OSError:
        pass  # a sandbox could not start: nothing passed
    finally:
        for box in (solution, judge_box):
            if box is not None:
                box.close()
    return [verdicts.get(i, Verdict(False, reason)) for i in range(len(tests))]


def _sealed(box: SandboxProcess, key: bytes, seq: int, question: str, deadline: float) -> str | None:
    """The payload of the next line from the solution sealed for (seq, question); unsealed lines
    (anything the solution wrote itself) are skipped. None at the deadline or when the box is gone."""
    head = f"{seq} "
    while True:
        line = box.receive(deadline, LINE_BYTES)
        if line is None:
            return None
        parts = line.split(" ", 2)
        if len(parts) != 3 or parts[0] != str(seq):
            continue
        expected = hashlib.blake2b(f"{head}{question} {parts[2]}".encode(), key=key, digest_size=16).hexdigest()
        if hmac.compare_digest(expected, parts[1]):
            return parts[2]


def _json(line: str) -> dict:
    """A verdict line from the judge's side (which runs only dataset tests), read with bounds."""
    if len(line) > 1 << 16:
        return {}
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}
