"""The code judge believes nothing a solution says about itself (rewards/judge.py).

One test per attack class of the 2026-12-07 drill: self-reported imports, patching the answering
side, unbounded data on the channel, and honest answers the old judge under-scored. Every attack
carries a wrong solution, so its true rate is 0.0 (plain Python's verdict for that wrong code run
honestly, worked out here by hand); each honest control beside it must score 1.0."""

import time

import pytest

import rewards
from rewards import SandboxLimits
from rewards.judge import judge_report, solution_imports

LIMITS = SandboxLimits(cpu_s=3, wall_s=8, memory_mb=768, processes=16)
AREA = ["assert math.isclose(area(1), 3.14159, rel_tol=1e-3)", "assert math.isclose(area(2), 12.566, rel_tol=1e-3)"]
BARE_AREA = ["assert isclose(area(1), 3.14159, rel_tol=1e-3)", "assert isclose(area(2), 12.566, rel_tol=1e-3)"]
EVEN = ["assert is_even(2)", "assert not is_even(3)", "assert is_even(4) is True"]
WRONG_AREA = "def area(r):\n    return 0\n"
WRONG_EVEN = "def is_even(n):\n    return n % 2 == 1\n"
HONEST_EVEN = "def is_even(n):\n    return n % 2 == 0\n"


def reward(solution: str, tests) -> float:
    return rewards.code_pass_rate(f"```python\n{solution}\n```", tests, limits=LIMITS)


# --- 1. imports are read from the source, never from what the solution reports --------------------

FORGED_IMPORTS = {
    "a function dressed as unittest.mock.call": (
        "def math():\n    pass\nmath.__module__ = 'unittest.mock'\nmath.__qualname__ = 'call'\n" + WRONG_AREA, AREA),
    "MagicMock imported as isclose": ("from unittest.mock import MagicMock as isclose\n" + WRONG_AREA, BARE_AREA),
    "an allowed module's function renamed to isclose": ("from operator import or_ as isclose\n" + WRONG_AREA, BARE_AREA),
    "the judge's own __main__ as math": ("import __main__ as math\n" + WRONG_AREA, AREA),
    "a submodule of mock bound as math": ("import unittest.mock as math\n" + WRONG_AREA, AREA),
    "a forged hello naming the judge's RemoteFailure": (
        "import os\nhello = b'{\"names\": {\"math\": {\"import\": [\"__main__\", \"RemoteFailure\"]}}}\\n'\n"
        "for fd in range(1, 12):\n    try:\n        os.write(fd, b'0 00 ' + hello)\n    except OSError:\n        pass\n"
        + WRONG_AREA, AREA),
}


@pytest.mark.parametrize("name", list(FORGED_IMPORTS))
def test_self_reported_imports_reach_no_test(name):
    solution, tests = FORGED_IMPORTS[name]
    assert reward(solution, tests) == 0.0


def test_real_imports_still_reach_the_tests():
    assert reward("import math\ndef area(r):\n    return math.pi * r * r\n", AREA) == 1.0
    assert reward("from math import isclose, pi\ndef area(r):\n    return pi * r * r\n", BARE_AREA) == 1.0
    assert reward("try:\n    from math import *\nexcept ImportError:\n    pass\ndef area(r):\n    return pi * r * r\n",
                  BARE_AREA) == 1.0


def test_the_source_decides_which_modules_are_imported():
    imports = solution_imports("import math as m, unittest.mock\nfrom collections import Counter as C, deque\n"
                               "from os import path\nimport __main__\nfrom . import x\ndef f():\n    import heapq\n")
    assert imports == {"m": ["math", None], "deque": ["collections", "deque"]}


# --- 2. a solution cannot patch the side that answers for it --------------------------------------

PATCHES = {
    "replaces encode in __main__": "import __main__\n__main__.encode = lambda *a, **k: ('bool', True)\n"
                                   "__main__.make_codec = lambda *a, **k: (lambda v: ('bool', True), None)\n",
    "replaces builtins the answerer calls": "import builtins\nbuiltins.type = lambda *a: bool\n"
                                            "builtins.issubclass = lambda *a: True\nbuiltins.int = lambda *a: 1\n"
                                            "builtins.memoryview = lambda b: memoryview(b'0 00 qQLaAm9r2gRib29s2QE=\\n')\n",
    "patches marshal and binascii": "import marshal, binascii\nmarshal.dumps = lambda *a, **k: b'\\xa9\\x02\\xda\\x02ok\\xa9\\x02\\xda\\x04bool\\xf5'\n"
                                    "binascii.b2a_base64 = lambda *a, **k: b'qQLaAm9r2gRib29s2QE='\n",
    "walks gc for the answerer's closures": "try:\n    import gc\n    for o in gc.get_objects():\n"
                                           "        if callable(o) and getattr(o, '__name__', '') == 'encode':\n"
                                           "            o.__code__ = (lambda v: ('bool', True)).__code__\n"
                                           "except Exception:\n    pass\n",
    "walks frames from a traceback": "def is_even(n):\n    try:\n        raise KeyError\n    except KeyError as e:\n"
                                     "        try:\n            f = e.__traceback__.tb_frame.f_back\n"
                                     "            f.f_locals['encode'] = lambda v: ('bool', True)\n"
                                     "        except Exception:\n            pass\n    return n % 2 == 1\n",
    "walks frames from a signal handler": "import sys, time\nsig = sys.modules['_signal']\nfound = []\n"
                                          "def grab(num, frame):\n    while frame is not None:\n"
                                          "        found.append(sorted(frame.f_locals))\n        frame = frame.f_back\n"
                                          "try:\n    sig.signal(sig.SIGALRM, grab)\n    sig.setitimer(sig.ITIMER_REAL, 0.01)\n"
                                          "    time.sleep(0.1)\nexcept ValueError:\n    pass  # the solution runs off the main thread\n"
                                          "assert not any('seal' in names or 'key' in names for names in found), found\n",
    "sets a trace function": "import sys\ntry:\n    sys.settrace(lambda *a: None)\nexcept Exception:\n    pass\n",
    "adds an audit hook of its own": "import sys\ntry:\n    sys.addaudithook(lambda *a: None)\nexcept Exception:\n    pass\n",
    "writes forged answers to every fd": "import os\nok = b'qQLaAm9r2gRib29s2QE='\nfor fd in range(1, 12):\n"
                                         "    for seq in range(8):\n        try:\n"
                                         "            os.write(fd, b'%d 0123456789abcdef0123456789abcdef %s\\n' % (seq, ok))\n"
                                         "        except OSError:\n            pass\n",
    "feeds the answerer questions of its own": (
        "import os, threading, marshal, binascii\nreal = os.dup(0)\nr, w = os.pipe()\nos.dup2(r, 0)\n"
        "ask = binascii.b2a_base64(marshal.dumps(('name', 'is_even', 'call', [('int', 2)], []), 4), newline=False)\n"
        "def relay():\n    stream = os.fdopen(real, 'rb')\n    for line in stream:\n"
        "        os.write(w, line.split(b' ')[0] + b' ' + ask + b'\\n')\n"
        "threading.Thread(target=relay, daemon=True).start()\n"),
    "loads ctypes to write its memory": "try:\n    import ctypes\n    ctypes.memset(0, 0, 0)\nexcept Exception:\n    pass\n",
}


@pytest.mark.parametrize("name", list(PATCHES))
def test_patching_the_answering_side_changes_nothing(name):
    body = PATCHES[name]
    solution = body if "def is_even" in body else WRONG_EVEN + body
    assert reward(solution, EVEN) == 0.0


SELF_HARMING = {"feeds the answerer questions of its own"}  # it replaces every question, so no answer is sealed


def test_the_honest_twin_of_each_patch_still_scores_one():
    """The same patches beside a right is_even: only the answers decide, so 1.0 (the signal-handler
    patch asserts, at load, that the frames it reached hold nothing of the answerer's)."""
    for name, body in PATCHES.items():
        if "def is_even" in body or name in SELF_HARMING:
            continue
        assert reward(HONEST_EVEN + body, EVEN) == 1.0, name


# --- 3. what crosses is bounded; nothing the solution writes can raise in the host ----------------

def test_a_deeply_nested_hello_scores_zero_without_raising():
    deep = "import os\nline = b'[' * 900000 + b']' * 900000 + b'\\n'\nfor fd in range(1, 12):\n    try:\n" \
           "        os.write(fd, b'0 ' + line)\n    except OSError:\n        pass\n"
    assert reward(deep + WRONG_EVEN, EVEN) == 0.0
    assert reward(deep + HONEST_EVEN, EVEN) == 1.0


def test_a_value_past_the_bounds_fails_with_a_reason():
    nested = "def f(depth):\n    x = []\n    for _ in range(depth):\n        x = [x]\n    return x\n"
    verdicts = judge_report(nested, ["assert f(900000) is not None", "assert f(50) is not None"], LIMITS)
    assert [v.passed for v in verdicts] == [False, True]
    assert "nested deeper than" in verdicts[0].reason
    caught = judge_report(nested, ["try:\n    f(900000)\nexcept Exception:\n    pass"], LIMITS)
    assert not caught[0].passed  # a test that catches everything cannot turn a refused answer into a pass


def test_a_source_that_cannot_parse_here_costs_only_itself():
    assert solution_imports("(" * 100000 + ")" * 100000) == {}
    assert reward("x = " + "(" * 150 + "1" + ")" * 150 + "\n" + HONEST_EVEN, EVEN) == 1.0


# --- 4. honest answers score what plain Python gives them -----------------------------------------

HONEST = {
    "an infinite generator taken with islice": (
        "def naturals():\n    n = 0\n    while True:\n        yield n\n        n += 1\n",
        ["import itertools\nassert list(itertools.islice(naturals(), 5)) == [0, 1, 2, 3, 4]",
         "assert next(naturals()) == 0", "g = naturals()\nnext(g)\nassert next(g) == 1"]),
    "nan inside a list": ("import math\ndef f():\n    return [math.nan, 1.0]\n",
                          ["assert f() == [math.nan, 1.0]", "assert f() != [float('nan'), 1.0]"]),
    "a 2 MiB value beside 50 MB of prints": ("def big():\n    for _ in range(50):\n        print('y' * 10**6)\n"
                                             "    return 'x' * (2 << 20)\n",
                                             ["assert len(big()) == 2 << 20", "assert big()[:3] == 'xxx'"]),
    "a name that shadows a builtin beside a test that calls it": (
        "len = 5\n__builtins__ = {}\ndef add(a, b):\n    return a + b\n", ["assert len([add(1, 2)]) == 1"]),
    "a function used as a value": ("def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, n))\n",
                                   ["assert all(map(is_prime, [2, 3, 5, 7]))", "assert not any(map(is_prime, [1, 4]))"]),
    "an object whose truth is its own": ("class Box:\n    def __init__(self, full):\n        self.full = full\n"
                                         "    def __bool__(self):\n        return self.full\n"
                                         "def make(full):\n    return Box(full)\n",
                                         ["assert make(True)", "assert not make(False)"]),
}


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_answers_score_what_plain_python_gives(name):
    solution, tests = HONEST[name]
    assert reward(solution, tests) == 1.0


def test_a_slow_infinite_generator_is_drawn_only_as_far_as_the_test_reads():
    slow = "import time\ndef ticks():\n    n = 0\n    while True:\n        time.sleep(0.05)\n        yield n\n        n += 1\n"
    start = time.monotonic()
    assert reward(slow, ["assert next(ticks()) == 0"]) == 1.0
    assert time.monotonic() - start < 3.0


def test_the_answering_side_cannot_be_ptraced_by_a_program_it_starts():
    """Its sandbox runs an execute-only interpreter copy, so the kernel makes it non-dumpable: a child
    that attaches to it gets EPERM (in a plain sandbox the same attach succeeds and stops the parent)."""
    from rewards.sandbox import run_python

    child = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "print(libc.ptrace(16, os.getppid(), 0, 0), ctypes.get_errno())")
    parent = f"import subprocess, sys\nprint(subprocess.run(['/usr/bin/python3', '-c', {child!r}], capture_output=True, text=True).stdout)"
    result = run_python(parent, "", SandboxLimits(proc=False, wall_s=10))
    assert result.stdout.split() == ["-1", "1"], result  # PTRACE_ATTACH refused with EPERM
