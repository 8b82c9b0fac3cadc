"""The code judge: a verdict the judged code cannot reach.

The solution and the tests run in two separate sandboxes (rewards.sandbox: their own
namespaces and uids). The solution's sandbox only ever answers questions — "call f with
these arguments", "what is attribute x of object 3" — and each answer can only be a value:
a Python literal (checked with `ast.literal_eval` on the judge's side) or a handle to an
object that stays in the solution's process. The tests run in the judge's sandbox, where
every top-level function of the solution is a proxy; the judge decides each test's
pass/fail there and reports it to this process. So a solution that prints fake reports,
patches globals or builtins, redefines `assert` helpers, exits early or kills itself can
only make its own answers wrong or missing: it scores what it truly passes. Names that
shadow a builtin are never exposed to the tests (a solution's own `sorted` or `len` cannot
replace the test's). The reward is passed / total, in [0, 1].

This process only relays lines (each at most 1 MiB, under one wall-clock deadline) and
reads the judge's verdict lines; it never parses what the solution writes beyond JSON.
"""

from __future__ import annotations

import json
import time
from typing import Sequence

from rewards.sandbox import SandboxLimits, SandboxProcess

# Runs in the solution's sandbox: load the solution, then answer the judge's questions.
SOLUTION_SIDE = r'''
import ast, json, os, sys
channel = os.fdopen(os.dup(1), "w")  # the answers; the solution's own prints go to stderr
os.dup2(2, 1)
sys.stdout = sys.stderr
objects = []

def encode(value):
    try:
        text = repr(value)
        if len(text) < 100000:
            ast.literal_eval(text)
            return {"value": text}
    except BaseException:
        pass
    objects.append(value)
    return {"ref": len(objects) - 1}

def decode(arg):
    return objects[arg["ref"]] if "ref" in arg else ast.literal_eval(arg["value"])

def reply(message):
    channel.write(json.dumps(message) + "\n")
    channel.flush()

namespace = {"__name__": "__solution__"}
try:
    exec(compile(json.loads(sys.stdin.readline())["source"], "<solution>", "exec"), namespace)  # sandbox-ok
    names = {k: ("callable" if callable(v) else encode(v)) for k, v in list(namespace.items())
             if not k.startswith("__")}
    reply({"names": names})
except BaseException as exc:
    reply({"failed": type(exc).__name__})
for line in sys.stdin:
    try:
        ask = json.loads(line)
        target = namespace[ask["name"]] if "name" in ask else objects[ask["ref"]]
        if ask["op"] == "getattr":
            result = getattr(target, ask["attr"])
        else:
            result = target(*[decode(a) for a in ask["args"]], **{k: decode(a) for k, a in ask["kwargs"].items()})
        reply(encode(result))
    except BaseException as exc:
        reply({"raised": type(exc).__name__, "message": str(exc)[:200]})
'''

# Runs in the judge's sandbox: each test against proxies of the solution; one verdict per test.
JUDGE_SIDE = r'''
import ast, builtins, json, sys
channel = sys.stdout
sys.stdout = sys.stderr
setup = json.loads(sys.stdin.readline())

class RemoteFailure(Exception):
    """The solution gave no usable answer."""

def ask(question):
    channel.write(json.dumps(question) + "\n")
    channel.flush()
    answer = json.loads(sys.stdin.readline())
    if "value" in answer:
        return ast.literal_eval(answer["value"])
    if "ref" in answer:
        return Remote({"ref": int(answer["ref"])})
    if "raised" in answer:
        kind = getattr(builtins, str(answer["raised"]), None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind(answer.get("message", ""))
    raise RemoteFailure(str(answer)[:200])

def encode(arg):
    if isinstance(arg, Remote):
        return dict(object.__getattribute__(arg, "_address"))
    text = repr(arg)
    ast.literal_eval(text)
    return {"value": text}

class Remote:
    """A function or object living in the solution's process."""
    def __init__(self, address):
        object.__setattr__(self, "_address", address)
    def __call__(self, *args, **kwargs):
        address = object.__getattribute__(self, "_address")
        return ask({**address, "op": "call", "args": [encode(a) for a in args],
                    "kwargs": {k: encode(v) for k, v in kwargs.items()}})
    def __getattr__(self, attr):
        return ask({**object.__getattribute__(self, "_address"), "op": "getattr", "attr": attr})

base = {}
for name, kind in setup["names"].items():
    if not isinstance(name, str) or not name.isidentifier() or hasattr(builtins, name):
        continue
    try:
        base[name] = Remote({"name": name}) if kind == "callable" else ast.literal_eval(kind["value"])
    except BaseException:
        pass
for index, test in enumerate(setup["tests"]):
    scope = dict(base, __name__="__test__")
    try:
        exec(compile(test, "<test %d>" % index, "exec"), scope)  # sandbox-ok: dataset tests, in the judge's sandbox
        passed = True
    except BaseException:
        passed = False
    channel.write(json.dumps({"test": index, "passed": passed}) + "\n")
    channel.flush()
channel.write(json.dumps({"done": True}) + "\n")
channel.flush()
'''

NO_ANSWER = json.dumps({"failed": "no answer"})


def judge(source: str, tests: Sequence[str], limits: SandboxLimits | None = None) -> list[bool]:
    """Which of `tests` pass against `source`, decided in the judge's sandbox (see the module doc).
    A test with no verdict by the deadline (`limits.wall_s` for everything) has failed."""
    limits = limits or SandboxLimits()
    tests = [str(t) for t in tests]
    deadline = time.monotonic() + limits.wall_s
    verdicts: dict[int, bool] = {}
    solution = judge_box = None
    try:
        solution = SandboxProcess(SOLUTION_SIDE, limits)
        solution.send(json.dumps({"source": source}))
        hello = _json(solution.receive(deadline))
        names = hello.get("names") if isinstance(hello.get("names"), dict) else {}
        if not names:  # the solution did not load: nothing can pass
            return [False] * len(tests)
        judge_box = SandboxProcess(JUDGE_SIDE, limits)
        judge_box.send(json.dumps({"tests": tests, "names": names}))
        while True:
            line = judge_box.receive(deadline)
            message = _json(line)
            if not message or message.get("done"):
                break
            if "test" in message:
                index = message["test"]
                if isinstance(index, int) and 0 <= index < len(tests) and index not in verdicts:
                    verdicts[index] = message.get("passed") is True
            elif "op" in message:  # a question for the solution: relay it, and its answer, unread
                answer = solution.receive(deadline) if solution.send(line) else None
                judge_box.send(answer if answer is not None else NO_ANSWER)
    except OSError:
        pass  # the sandbox could not start: nothing passed
    finally:
        for box in (solution, judge_box):
            if box is not None:
                box.close()
    return [verdicts.get(i, False) for i in range(len(tests))]


def _json(line: str | None) -> dict:
    if line is None:
        return {}
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
