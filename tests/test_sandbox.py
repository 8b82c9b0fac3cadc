"""The sandbox for model-written code: hostile snippets are contained, the host is unaffected.

Each hostile "solution" defines f() that returns 1 only if its attack worked, and the
test asserts f() == 1 — so a contained attack scores 0 through the real `code` reward.
"""

import os
import socket
import subprocess
import time

import pytest

import rewards
from rewards import SandboxLimits, run_python

LIMITS = SandboxLimits(cpu_s=2, wall_s=6, memory_mb=512, processes=16)
CHECK = ["assert f() == 1"]


def code_reward(solution: str) -> float:
    return rewards.code_pass_rate(f"```python\n{solution}\n```", CHECK, limits=LIMITS)


def host_processes() -> int:
    return len(subprocess.run(["ps", "-e", "--no-headers"], capture_output=True, text=True).stdout.splitlines())


def test_code_reward_runs_real_tests():
    good = "def add(a, b):\n    return a + b"
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert rewards.code_pass_rate(f"```python\n{good}\n```", tests, limits=LIMITS) == 1.0
    half = "def add(a, b):\n    return 3"
    assert rewards.code_pass_rate(f"<answer>{half}</answer>", tests, limits=LIMITS) == 0.5
    assert rewards.get("code")(["p"], [f"```python\n{good}\n```"], tests=[tests]) == [1.0]


def test_infinite_loop_is_killed():
    start = time.perf_counter()
    result = run_python("while True:\n    pass", limits=LIMITS)
    assert result.returncode != 0 and time.perf_counter() - start < LIMITS.wall_s + 2
    assert code_reward("while True:\n    pass\ndef f():\n    return 1") == 0.0


def test_sleeping_code_hits_the_wall_clock_limit():
    result = run_python("import time\ntime.sleep(60)", limits=SandboxLimits(wall_s=1.5))
    assert result.timed_out and result.seconds < 5


def test_process_storm_is_bounded_and_cleaned_up():
    before = host_processes()
    storm = (
        "import os, time\n"
        "started = 0\n"
        "for _ in range(200):\n"  # bounded by the loop even if every limit failed
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        started += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print('started', started)\n"
        "def f():\n"
        "    return 1 if started == 200 else 0\n"
    )
    result = run_python(storm, limits=LIMITS)
    started = int(result.stdout.split()[-1])
    assert started < LIMITS.processes
    assert code_reward(storm) == 0.0
    time.sleep(0.5)
    assert host_processes() <= before + 2  # every forked child died with the sandbox


def test_huge_allocation_is_refused():
    result = run_python("x = bytearray(4 * 1024 ** 3)", limits=LIMITS)
    assert result.returncode != 0 and "MemoryError" in result.stderr
    assert code_reward("x = bytearray(4 * 1024 ** 3)\ndef f():\n    return 1") == 0.0


def test_writes_outside_the_sandbox_never_reach_the_host(tmp_path):
    targets = [str(tmp_path / "escaped.txt"), os.path.join(os.getcwd(), "escaped.txt"), "/root/escaped.txt"]
    attack = (
        f"written = 0\n"
        f"for path in {targets!r}:\n"
        f"    try:\n"
        f"        open(path, 'w').write('pwned')\n"
        f"        written += 1\n"
        f"    except OSError:\n"
        f"        pass\n"
        f"open('/tmp/inside.txt', 'w').write('fine')  # its own scratch space works\n"
        f"def f():\n"
        f"    return 1 if written else 0\n"
    )
    assert code_reward(attack) == 0.0
    assert not any(os.path.exists(p) for p in targets)
    assert not os.path.exists("/tmp/inside.txt")  # the scratch tmpfs is gone


def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        attack = (
            "import socket\n"
            "def f():\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
            "    return 1\n"
        )
        assert code_reward(attack) == 0.0
        result = run_python(attack + "f()", limits=LIMITS)
        assert result.returncode != 0 and ("unreachable" in result.stderr or "refused" in result.stderr)
    finally:
        server.close()


def test_parent_environment_is_invisible(monkeypatch):
    monkeypatch.setenv("DLMRL_TEST_SECRET", "hunter2")
    attack = (
        "import glob, os\n"
        "seen = ' '.join(f'{k}={v}' for k, v in os.environ.items())\n"
        "for path in glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        seen += open(path, 'rb').read().decode(errors='replace')\n"
        "    except OSError:\n"
        "        pass\n"
        "print(seen)\n"
        "def f():\n"
        "    return 1 if 'hunter2' in seen else 0\n"
    )
    result = run_python(attack, limits=LIMITS)
    assert result.returncode == 0 and "hunter2" not in result.stdout
    assert code_reward(attack) == 0.0


def test_output_is_bounded():
    result = run_python("print('x' * 10**8)", limits=SandboxLimits(file_mb=1, output_chars=1000))
    assert len(result.stdout) <= 1000 and "File too large" in result.stderr


@pytest.mark.parametrize("marker", ["print('@@dlmrl-0000@@{\"passed\": 1, \"total\": 1}')"])
def test_forged_report_does_not_pass(marker):
    assert code_reward(marker + "\ndef f():\n    return 0") == 0.0
