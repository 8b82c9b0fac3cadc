"""The code judge: a verdict the judged code cannot reach.

The solution and the tests run in two separate sandboxes (rewards.sandbox: their own
namespaces and uids). The solution's sandbox only ever answers questions — "call f with
these arguments", "what is attribute x of object 3", "is object 3 equal to object 5" — and
each answer is data: a value in a tagged JSON encoding (below), or a handle to an object
that stays in the solution's process. The tests run in the judge's sandbox; the judge
decides each test's pass/fail there and reports it to this process. So a solution that
prints fake reports, patches globals or builtins, redefines `assert` helpers, exits early or
kills itself can only make its own answers wrong or missing: it scores what it truly passes.
The reward is passed / total, in [0, 1].

The rule, as MBPP / HumanEval tests are written (`assert f(args) == expected`, run after the
solution in one namespace, often leaning on the solution's own `import math`): every test gets
the verdict plain Python would give it, except where that verdict would come from the
solution's code instead of its answers:
  - modules the solution imported (`import math`, `import numpy as np`) and things it imported
    from them (`from collections import Counter`) are visible to the tests as the real ones,
    imported on the judge's side — never the solution's objects;
  - objects the solution defined reach the tests only as the functions / classes the task names
    (HumanEval's `entry_point`, else every name a test calls: `f(...)`, `Counter(2)`), so a
    solution's own `math` (a class whose `isclose` says True) is not the tests' `math`; names that
    shadow a builtin are never exposed;
  - results cross the boundary by value for every standard type with an equality a test can use:
    None, bool, int (any size), float (nan and inf too), complex, str, bytes, list, tuple, dict,
    set, frozenset, range, Counter / defaultdict / OrderedDict / deque, and subclasses of these as
    their base type's value (a subclass's own `__eq__` or `__repr__` cannot lie); generators and
    other iterators are drawn (at most 100,000 items, in the solution's sandbox and time) and
    reach the test as an iterator over those items;
  - any other object is a handle: attributes, calls, `len`, indexing, iteration and `str` are
    asked of the solution; two handles compare with the solution's real `==`; a handle never
    equals a value the test wrote (plain Python would let the object decide: how an
    always-equal object, or one whose repr shows the right value, forges a pass).
A solution's calls run under its own sandbox's limits; the whole judging of one answer under one
wall-clock deadline (`SandboxLimits.wall_s`), so a slow answer costs only its own score.

This process only relays lines (each at most 1 MiB, under that deadline) and reads the judge's
verdict lines; it never parses what the solution writes beyond JSON.
"""

from __future__ import annotations

import ast
import json
import time
from typing import Sequence

from rewards.sandbox import SandboxLimits, SandboxProcess

# The tagged value encoding, shared by both sides (pure data: decoding never runs solution code).
CODEC = r'''
import collections, collections.abc, importlib, json, sys, types
sys.set_int_max_str_digits(0)
MAX_ITEMS = 100000
DICTS = {dict: "dict", collections.Counter: "Counter", collections.OrderedDict: "OrderedDict",
         collections.defaultdict: "defaultdict"}

def encode(v, ref, depth=0):
    """v -> JSON-able tag; `ref(v)` gives a handle's address for anything else."""
    if depth > 100:
        raise ValueError("value nested too deeply")
    t = type(v)
    if v is None or t is bool:
        return {"v": v}
    if isinstance(v, int) and not isinstance(v, bool):
        return {"int": int.__repr__(v)}
    if isinstance(v, float):
        return {"float": float.__repr__(v)}
    if isinstance(v, complex):
        return {"complex": [float.__repr__(complex.real.__get__(v)), float.__repr__(complex.imag.__get__(v))]}
    if isinstance(v, str):
        return {"str": str.__add__(v, "")}
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": bytes.hex(bytes(v) if t is bytearray else bytes.__add__(v, b""))}
    items = lambda xs: [encode(x, ref, depth + 1) for x in xs]
    if isinstance(v, list):
        return {"list": items(list.copy(v))}
    if isinstance(v, tuple):
        return {"tuple": items(tuple.__getitem__(v, slice(None)))}
    if isinstance(v, dict):
        kind = next((name for base, name in DICTS.items() if t is base), "dict")
        pairs = list(dict.items(dict.copy(v)))
        return {"dict": kind, "items": [[encode(k, ref, depth + 1), encode(x, ref, depth + 1)] for k, x in pairs]}
    if isinstance(v, frozenset):
        return {"frozenset": items(frozenset.copy(v))}
    if isinstance(v, set):
        return {"set": items(set.copy(v))}
    if t is range:
        return {"range": [v.start, v.stop, v.step]}
    if t is collections.deque:
        return {"deque": items(list(v))}
    if isinstance(v, types.ModuleType):
        return {"module": str.__add__(v.__name__, "")}
    if isinstance(v, collections.abc.Iterator):
        drawn = []
        for x in v:
            drawn.append(x)
            if len(drawn) > MAX_ITEMS:
                raise ValueError("iterator longer than %d items" % MAX_ITEMS)
        return {"iter": items(drawn)}
    return {"ref": ref(v)}

def decode(tag, handle):
    """Tag -> value; `handle(address)` makes what a {"ref": n} stands for."""
    d = lambda x: decode(x, handle)
    if "v" in tag:
        value = tag["v"]
        if value is None or value is True or value is False:
            return value
        raise ValueError("bad plain value")
    if "int" in tag:
        return int(tag["int"])
    if "float" in tag:
        return float(tag["float"])
    if "complex" in tag:
        return complex(float(tag["complex"][0]), float(tag["complex"][1]))
    if "str" in tag:
        return str(tag["str"])
    if "bytes" in tag:
        return bytes.fromhex(tag["bytes"])
    if "list" in tag:
        return [d(x) for x in tag["list"]]
    if "tuple" in tag:
        return tuple(d(x) for x in tag["tuple"])
    if "dict" in tag:
        pairs = [(d(k), d(x)) for k, x in tag["items"]]
        kind = tag["dict"]
        if kind == "Counter":
            return collections.Counter(dict(pairs))
        if kind == "OrderedDict":
            return collections.OrderedDict(pairs)
        if kind == "defaultdict":
            return collections.defaultdict(None, pairs)
        return dict(pairs)
    if "frozenset" in tag:
        return frozenset(d(x) for x in tag["frozenset"])
    if "set" in tag:
        return set(d(x) for x in tag["set"])
    if "range" in tag:
        return range(*[int(x) for x in tag["range"]])
    if "deque" in tag:
        return collections.deque(d(x) for x in tag["deque"])
    if "iter" in tag:
        return iter([d(x) for x in tag["iter"]])
    if "module" in tag:
        return importlib.import_module(str(tag["module"]))
    if "ref" in tag:
        return handle(int(tag["ref"]))
    raise ValueError("unknown tag")
'''

# Runs in the solution's sandbox: load the solution, then answer the judge's questions.
SOLUTION_SIDE = CODEC + r'''
import os
channel = os.fdopen(os.dup(1), "w")  # the answers; the solution's own prints go to stderr
os.dup2(2, 1)
sys.stdout = sys.stderr
objects = []

def ref(value):
    objects.append(value)
    return len(objects) - 1

def reply(message):
    channel.write(json.dumps(message) + "\n")
    channel.flush()

def describe(value):
    """How a top-level name reaches the judge: a module or something imported from one (the
    judge imports the real one), a callable the solution made, or a value."""
    if isinstance(value, types.ModuleType):
        return {"module": str.__add__(value.__name__, "")}
    module = getattr(value, "__module__", None)
    if callable(value) and isinstance(module, str) and module not in ("__solution__", "builtins") \
            and module in sys.modules and isinstance(getattr(value, "__qualname__", None), str):
        return {"import": [str.__add__(module, ""), str.__add__(value.__qualname__, "")]}
    if callable(value):
        return {"callable": True}
    return encode(value, ref)

namespace = {"__name__": "__solution__"}
try:
    exec(compile(json.loads(sys.stdin.readline())["source"], "<solution>", "exec"), namespace)  # sandbox-ok
    names = {}
    for k, v in list(namespace.items()):
        if isinstance(k, str) and not k.startswith("__"):
            try:
                names[k] = describe(v)
            except BaseException:
                pass
    reply({"names": names})
except BaseException as exc:
    reply({"failed": type(exc).__name__})
for line in sys.stdin:
    try:
        ask = json.loads(line)
        target = namespace[ask["name"]] if "name" in ask else objects[ask["ref"]]
        args = [decode(a, objects.__getitem__) for a in ask.get("args", [])]
        kwargs = {k: decode(a, objects.__getitem__) for k, a in ask.get("kwargs", {}).items()}
        op = ask["op"]
        if op == "getattr":
            result = getattr(target, ask["attr"])
        elif op == "call":
            result = target(*args, **kwargs)
        elif op == "eq":
            result = bool(target == args[0])
        elif op == "method":  # len, indexing, iteration, str, ... as plain Python would call them
            result = {"len": len, "str": str, "repr": repr, "iter": lambda x: iter(list(x)),
                      "getitem": lambda x, i: x[i], "contains": lambda x, i: i in x}[ask["method"]](target, *args)
        else:
            raise ValueError("unknown question")
        reply(encode(result, ref))
    except BaseException as exc:
        reply({"raised": type(exc).__name__, "message": str(exc)[:200]})
'''

# Runs in the judge's sandbox: each test against the exposed names; one verdict per test.
JUDGE_SIDE = CODEC + r'''
import builtins
channel = sys.stdout
sys.stdout = sys.stderr
setup = json.loads(sys.stdin.readline())

class RemoteFailure(Exception):
    """The solution gave no usable answer."""

def ask(question):
    channel.write(json.dumps(question) + "\n")
    channel.flush()
    answer = json.loads(sys.stdin.readline())
    if "raised" in answer:
        kind = getattr(builtins, str(answer["raised"]), None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            raise kind(answer.get("message", ""))
        raise RemoteFailure(str(answer)[:200])
    try:
        return decode(answer, lambda n: Remote({"ref": n}))
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        raise RemoteFailure(str(answer)[:200]) from exc

def address(obj):
    return dict(object.__getattribute__(obj, "_address"))

def out(arg):
    return encode(arg, lambda v: address(v)["ref"] if isinstance(v, Remote) and "ref" in address(v) else
                  _unsendable(v))

def _unsendable(v):
    raise TypeError("cannot send %s to the solution" % type(v).__name__)

class Remote:
    """A function or object living in the solution's process."""
    def __init__(self, where):
        object.__setattr__(self, "_address", where)
    def _ask(self, op, *args, **extra):
        return ask({**address(self), "op": op, "args": [out(a) for a in args], **extra})
    def __call__(self, *args, **kwargs):
        return ask({**address(self), "op": "call", "args": [out(a) for a in args],
                    "kwargs": {k: out(v) for k, v in kwargs.items()}})
    def __getattr__(self, attr):
        return self._ask("getattr", attr=attr)
    def __eq__(self, other):  # two solution objects: the solution's own equality; never a test's value
        if isinstance(other, Remote) and "ref" in address(other):
            return self._ask("eq", other) is True
        return NotImplemented
    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result
    __hash__ = object.__hash__
    def __len__(self):
        return self._ask("method", method="len")
    def __getitem__(self, index):
        return self._ask("method", index, method="getitem")
    def __iter__(self):
        return self._ask("method", method="iter")
    def __contains__(self, item):
        return self._ask("method", item, method="contains") is True
    def __str__(self):
        return self._ask("method", method="str")
    def __repr__(self):
        return self._ask("method", method="repr")

def pure(tag):
    """A value without handles (safe to show any test by value)."""
    return decode(tag, lambda n: (_ for _ in ()).throw(ValueError("handle")))

named = set(setup["named"])
base = {}
for name, kind in setup["names"].items():
    if not isinstance(name, str) or not name.isidentifier() or hasattr(builtins, name):
        continue
    try:
        if "import" in kind:  # the real thing, imported here
            module, qualname = kind["import"]
            value = importlib.import_module(str(module))
            for part in str(qualname).split("."):
                value = getattr(value, part)
            base[name] = value
        elif "module" in kind:
            base[name] = importlib.import_module(str(kind["module"]))
        elif "callable" in kind:
            if name in named:
                base[name] = Remote({"name": name})
        elif name in named:
            base[name] = decode(kind, lambda n: Remote({"ref": n}))
        else:
            base[name] = pure(kind)
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


def called_names(tests: Sequence[str]) -> set[str]:
    """Names the tests call directly (`f(...)`, `Counter(2)`): the functions / classes a task names
    when it does not say (MBPP). A test that does not parse names nothing (it will fail anyway)."""
    names = set()
    for test in tests:
        try:
            tree = ast.parse(test)
        except (SyntaxError, ValueError):
            continue
        names.update(node.func.id for node in ast.walk(tree)
                     if isinstance(node, ast.Call) and isinstance(node.func, ast.Name))
    return names


NO_ANSWER = json.dumps({"failed": "no answer"})


def judge(source: str, tests: Sequence[str], limits: SandboxLimits | None = None,
          entry_points: Sequence[str] | None = None) -> list[bool]:
    """Which of `tests` pass against `source`, decided in the judge's sandbox (see the module doc).
    `entry_points`: the functions / classes the task names (default: those the tests call).
    A test with no verdict by the deadline (`limits.wall_s` for everything) has failed."""
    limits = limits or SandboxLimits()
    tests = [str(t) for t in tests]
    named = sorted(set(entry_points) if entry_points else called_names(tests))
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
        judge_box.send(json.dumps({"tests": tests, "names": names, "named": named}))
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
