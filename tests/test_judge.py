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
    """50 sandboxed solutions that sleep past the reward's timeout, killed with the reward pool
    (3 batches) and by the judge's own deadline: afterwards no sandbox process is left."""
    from rewards import RewardRunner, RewardSpec, RewardsConfig

    before = sandbox_processes()
    sleeper = "```python\nimport time\ntime.sleep(60)\ndef add(a, b):\n    return a + b\n```"
    config = RewardsConfig(functions=[RewardSpec(name="code")], timeout_s=1.0, workers=1)
    with RewardRunner(config) as runner:
        for _ in range(3):  # the pool is killed on each timeout; its sandboxes must die with it
            scored = runner(["p"] * 4, [sleeper] * 4, None, tests=[TESTS] * 4)
            assert scored.per_function["code"] == [0.0] * 4
    quick = SandboxLimits(cpu_s=1, wall_s=0.3)
    for _ in range(38):
        assert rewards.code_pass_rate(sleeper, TESTS, limits=quick) == 0.0
    time.sleep(1.0)
    assert sandbox_processes() <= before
