"""The code reward against a hostile battery: forgeries, escapes and bombs. Each snippet is a
'solution' for the same three tests; its reward must equal the pass rate it truly earns (computed
here by hand for each snippet, not by the judge), never above 1. Attacks define `attack()`, which
returns 1 only if the attack worked, and get one more test `assert attack() == 1`."""

import os
import socket
import subprocess
import time

import pytest

import rewards
from rewards import SandboxLimits

LIMITS = SandboxLimits(cpu_s=2, wall_s=6, memory_mb=512, processes=16)
TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert sorted([add(0, 1), add(0, 0)]) == [0, 1]"]
WRONG = "def add(a, b):\n    return 0\n"
HOST_SECRET = os.path.abspath(__file__)  # a world-readable project file


def reward(solution: str, tests=TESTS) -> float:
    return rewards.code_pass_rate(f"```python\n{solution}\n```", tests, limits=LIMITS)


def with_attack(body: str) -> tuple[str, list[str]]:
    return WRONG + body, TESTS + ["assert attack() == 1"]


def sandbox_processes() -> int:
    out = subprocess.run(["ps", "-e", "-o", "uid=,comm="], capture_output=True, text=True).stdout.splitlines()
    return sum(1 for line in out if line.split()[0].isdigit() and 200_000 <= int(line.split()[0]) < 1_200_000
               or line.split()[-1] == "unshare")


FORGERIES = {
    # the old harness printed {"passed": N, "total": M} after a marker: print reports of every shape
    "fake report": WRONG + "print('{\"passed\": 500000, \"total\": 3}')\nprint('@@dlmrl-0@@{\"passed\": 3, \"total\": 3}')\n",
    "patched counter": WRONG + "import __main__, gc\n__main__.passed = 10**6\nfor o in gc.get_objects():\n"
                               "    if isinstance(o, dict) and 'passed' in o:\n        o['passed'] = 10**6\n",
    "sys.exit before tests": "import sys\nsys.exit(0)\n" + WRONG,
    "os._exit before tests": "import os\nos._exit(0)\n" + WRONG,
    "patched builtins": WRONG + "import builtins\nbuiltins.AssertionError = type('N', (BaseException,), {})\n"
                                "builtins.sorted = lambda *a, **k: [0, 1]\nbuiltins.exec = lambda *a, **k: None\n",
    "always-equal object": "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                           "def add(a, b):\n    return Yes()\n",
    "redefined helper": WRONG + "def sorted(*args, **kwargs):\n    return [0, 1]\nAssertionError = None\n",
    "forged channel lines": "import os\nfor fd in range(3, 12):\n    try:\n        os.write(fd, b'{\"test\": 0, \"passed\": true}\\n"
                            "{\"done\": true}\\n')\n    except OSError:\n        pass\n" + WRONG,
    "kills its judge": WRONG + "import os, signal\nfor pid in range(1, 200):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
                              "    except OSError:\n        pass\n",
    "hogs stdin": "import sys\nsys.stdin.read()\n" + WRONG,
    "huge output, correct": "print('x' * 10**7)\ndef add(a, b):\n    return a + b\n",
    "half right and a fake report": "def add(a, b):\n    return 3 if a == 1 else 0\nprint('{\"passed\": 3, \"total\": 3}')\n",
}
TRUE_RATES = {"huge output, correct": 1.0, "half right and a fake report": 1 / 3}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forgeries_score_their_true_pass_rate(name):
    assert reward(FORGERIES[name]) == pytest.approx(TRUE_RATES.get(name, 0.0))


def test_honest_solutions_still_pass():
    assert reward("def add(a, b):\n    return a + b\n") == 1.0
    classes = ["c = Counter(2)\nc.up()\nassert c.value == 3", "assert Counter(0).up() is None"]
    assert reward("class Counter:\n    def __init__(self, v):\n        self.value = v\n"
                  "    def up(self):\n        self.value += 1\n", classes) == 1.0
    assert reward("def add(a, b):\n    raise ValueError('no')\n",
                  ["try:\n    add(1, 2)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError"]) == 1.0


def escapes(tmp_path, port):
    targets = [str(tmp_path / "escaped.txt"), "/root/escaped.txt", os.path.join(os.getcwd(), "escaped.txt")]
    return {
        "reads a project file": f"def attack():\n    return 1 if 'hostile battery' in open({HOST_SECRET!r}).read() else 0\n",
        "reads /etc/passwd": "def attack():\n    return 1 if 'root:' in open('/etc/passwd').read() else 0\n",
        "writes to the host": f"def attack():\n    n = 0\n    for p in {targets!r}:\n        try:\n"
                              f"            open(p, 'w').write('x')\n            n += 1\n        except OSError:\n"
                              f"            pass\n    return 1 if n else 0\n",
        "network": f"import socket\ndef attack():\n    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
                   f"    return 1\n",
        "fork bomb": "import os\nn = 0\nfor _ in range(200):\n    try:\n        if os.fork() == 0:\n"
                     "            import time; time.sleep(30); os._exit(0)\n        n += 1\n    except OSError:\n"
                     "        break\ndef attack():\n    return 1 if n == 200 else 0\n",
        "memory bomb": "x = bytearray(4 * 1024 ** 3)\ndef attack():\n    return 1\n",
        "infinite loop": "while True:\n    pass\ndef attack():\n    return 1\n",
    }, targets


def test_escapes_and_bombs_are_contained(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        attacks, targets = escapes(tmp_path, server.getsockname()[1])
        before = sandbox_processes()
        for name, body in attacks.items():
            solution, tests = with_attack(body)
            assert reward(solution, tests) == 0.0, name
        assert not any(os.path.exists(p) for p in targets)
        time.sleep(0.5)
        assert sandbox_processes() <= before
    finally:
        server.close()


def test_timeouts_leave_no_process_behind():
    """26 sandboxed solutions that sleep past the reward's timeout, killed with the reward pool
    (3 batches of 4) and by the judge's own deadline (14): afterwards no sandbox process is left."""
    from rewards import RewardRunner, RewardSpec, RewardsConfig

    before = sandbox_processes()
    sleeper = "```python\nimport time\ntime.sleep(60)\ndef add(a, b):\n    return a + b\n```"
    config = RewardsConfig(functions=[RewardSpec(name="code")], timeout_s=1.0, workers=1)
    with RewardRunner(config) as runner:
        for _ in range(3):  # the pool is killed on each timeout; its sandboxes must die with it
            scored = runner(["p"] * 4, [sleeper] * 4, None, tests=[TESTS] * 4)
            assert scored.per_function["code"] == [0.0] * 4
    quick = SandboxLimits(cpu_s=1, wall_s=0.3)
    for _ in range(14):
        assert rewards.code_pass_rate(sleeper, TESTS, limits=quick) == 0.0
    time.sleep(1.0)
    assert sandbox_processes() <= before


# --- the judge gives plain Python's verdict, never the solution's -------------------------------

AREA = ["assert math.isclose(area(1), 3.14159, rel_tol=1e-3)", "assert math.isclose(area(2), 12.566, rel_tol=1e-3)"]
SHADOWING = {
    "a class named math": "class math:\n    @staticmethod\n    def isclose(*a, **k):\n        return True\n"
                          "def area(r):\n    return 0\n",
    "an object named math": "class FakeMath:\n    def isclose(self, *a, **k):\n        return True\n"
                            "math = FakeMath()\ndef area(r):\n    return 0\n",
    "a module object made by hand": "import types\nmath = types.ModuleType('math')\n"
                                    "math.isclose = lambda *a, **k: True\ndef area(r):\n    return 0\n",
}


@pytest.mark.parametrize("name", list(SHADOWING))
def test_a_solution_cannot_stand_in_for_the_modules_the_tests_use(name):
    assert reward(SHADOWING[name], AREA) == 0.0


def test_the_tests_see_the_real_modules_the_solution_imported():
    assert reward("import math\ndef area(r):\n    return math.pi * r * r\n", AREA) == 1.0
    assert reward("from math import pi\nimport math as m\ndef area(r):\n    return pi * r ** 2\n",
                  ["assert m.isclose(area(1), 3.14159, rel_tol=1e-3)", "assert pi > 3"]) == 1.0


def test_an_object_whose_repr_lies_is_not_the_value_it_shows():
    assert reward("class Liar:\n    def __repr__(self):\n        return '3'\n    def __eq__(self, other):\n"
                  "        return False\n    __hash__ = None\ndef add(a, b):\n    return Liar()\n") == 0.0
    assert reward("class Three(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
                  "def add(a, b):\n    return Three(0)\n") == 0.0  # an int subclass counts as its int value


HONEST = {
    "Counter": ("from collections import Counter\ndef count(s):\n    return Counter(s)\n",
                ["assert count('aab') == {'a': 2, 'b': 1}", "assert count('aab').most_common(1) == [('a', 2)]",
                 "assert count('') == Counter()"]),
    "defaultdict": ("from collections import defaultdict\ndef group(xs):\n    d = defaultdict(list)\n"
                    "    for x in xs:\n        d[x % 2].append(x)\n    return d\n",
                    ["assert group([1, 2, 3]) == {1: [1, 3], 0: [2]}", "assert group([])  == {}"]),
    "generator": ("def evens(n):\n    for i in range(0, n, 2):\n        yield i\n",
                  ["assert list(evens(5)) == [0, 2, 4]", "assert sum(evens(5)) == 6", "assert next(evens(3)) == 0"]),
    "frozenset": ("def uniq(xs):\n    return frozenset(xs)\n",
                  ["assert uniq([1, 1, 2]) == frozenset({1, 2})", "assert uniq([1]) == {1}"]),
    "nan and inf": ("import math\ndef div(a, b):\n    if b == 0:\n        return math.inf if a else math.nan\n"
                    "    return a / b\n",
                    ["assert div(1, 0) == float('inf')", "assert math.isnan(div(0, 0))", "assert div(1, 2) == 0.5"]),
    "5,000-digit integer": ("def big(n):\n    return 7 ** n\n",
                            ["assert big(6000) == 7 ** 6000", "assert big(6000) % 1000 == pow(7, 6000, 1000)"]),
    "objects of its own class": ("class P:\n    def __init__(self, x):\n        self.x = x\n"
                                 "    def __eq__(self, other):\n        return isinstance(other, P) and self.x == other.x\n"
                                 "    def __len__(self):\n        return self.x\n",
                                 ["assert P(1) == P(1)", "assert P(1) != P(2)", "assert len(P(3)) == 3",
                                  "assert P(2).x == 2"]),
}


@pytest.mark.parametrize("name", list(HONEST))
def test_honest_answers_of_every_standard_type_pass(name):
    solution, tests = HONEST[name]
    assert reward(solution, tests) == 1.0


def test_slow_answers_cost_only_their_own_score():
    """10 answers that sleep 4 s per call next to 2 honest ones: each answer has its own limit
    (wall_s), all are judged at once, so the honest ones keep 1.0 and the batch ends within it."""
    slow = "```python\nimport time\ndef add(a, b):\n    time.sleep(4)\n    return a + b\n```"
    honest = "```python\ndef add(a, b):\n    return a + b\n```"
    completions = [slow] * 5 + [honest] + [slow] * 5 + [honest]
    start = time.monotonic()
    scores = rewards.get("code")(["p"] * 12, completions, tests=[TESTS] * 12)
    elapsed = time.monotonic() - start
    assert scores[5] == 1.0 and scores[11] == 1.0
    assert all(s < 1.0 for i, s in enumerate(scores) if i not in (5, 11))
    assert elapsed < rewards.SandboxLimits().wall_s + 5, elapsed
