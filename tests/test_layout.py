"""The repository's shape (docs/architecture.md): small modules, one import direction, docs that
stand on their own, scripts that do not shadow the standard library."""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("reasoning", "rollouts", "rewards")


def python_files(*folders):
    for folder in folders:
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            yield from (os.path.join(base, f) for f in files if f.endswith(".py"))


def test_no_module_of_the_packages_is_over_400_lines():
    long = {os.path.relpath(f, ROOT): n for f in python_files(*PACKAGES) if (n := len(open(f).readlines())) > 400}
    assert not long, long


def test_imports_run_from_reasoning_to_rollouts_and_rewards_only():
    wrong = []
    for f in python_files("rollouts", "rewards"):
        for node in ast.walk(ast.parse(open(f).read())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            wrong += [(os.path.relpath(f, ROOT), n) for n in names if n.split(".")[0] == "reasoning"]
    assert not wrong, wrong


def test_nothing_points_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:  # not a git checkout (an sdist): nothing to check
        return
    here = os.path.relpath(__file__, ROOT)
    hits = [f for f in tracked if f != here and f.endswith((".py", ".md", ".yaml", ".toml", "Makefile"))
            and "../shared" in open(os.path.join(ROOT, f), errors="replace").read()]
    assert not hits, hits


def test_no_script_shadows_a_standard_library_module():
    """`python benchmarks/x.py` puts benchmarks/ on sys.path: a benchmarks/signal.py there broke
    `import torch` in every other benchmark (torch imports the stdlib's signal)."""
    for folder in ("benchmarks", "tests", *PACKAGES):
        names = {f[:-3] for f in os.listdir(os.path.join(ROOT, folder)) if f.endswith(".py")}
        assert not names & set(sys.stdlib_module_names), (folder, names & set(sys.stdlib_module_names))
