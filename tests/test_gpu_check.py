"""benchmarks/gpu_check.py's path, checked on the CPU: the refusal without CUDA, the full-size
meta-device builds against the manifests, and every stage on shrunk configs (the numbers on a GPU
are in benchmarks/RESULTS.md when a GPU machine was lent)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402

pytestmark = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU-only refusal")


def run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})


def test_without_cuda_it_refuses_in_one_line():
    result = run()
    assert result.returncode == 2
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert "no CUDA device" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", list(gpu_check.MANIFESTS))
def test_the_full_size_build_on_the_meta_device_matches_the_manifest(kind):
    with open(os.path.join(ROOT, "tests", "fixtures", gpu_check.MANIFESTS[kind])) as fh:
        expected = json.load(fh)["parameters"]
    assert gpu_check.meta_parameters(kind) == expected


def test_the_memory_prediction_it_reports_is_computed():
    from memory import measure

    row = measure("sdar", 16, 16, 16)
    assert row["parameters"] == gpu_check.manifest("sdar")["parameters"]
    assert 15 < row["weights_gib"] < 16 and row["lora_train_gib"] > 0 and row["activations_ckpt_gib"] > 0


@pytest.mark.parametrize("kind,gen", [("llada", 64), ("sdar", 16), ("llada2", 32)])
def test_every_stage_runs_on_shrunk_configs(kind, gen):
    result = run("--device", "cpu", "--shrink", "--kinds", kind, "--gen", str(gen), "--prompt", "8", "--batch", "4",
                 "--no-zero2")
    assert result.returncode == 0, result.stderr[-2000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])[kind]
    caches = gpu_check.CACHES[kind]
    assert set(row["sampler"]) == {f"{c}{t}_answers_per_s" for c in caches for t in ("", "+threshold")}
    assert row["rl_step"]["replay_max_abs_diff"] < 1e-2  # bf16 weights, fp32 CPU maths
    assert row["rl_step"]["trajectory_step_s"] > 0 and row["rl_step"]["mean_field_step_s"] > 0
