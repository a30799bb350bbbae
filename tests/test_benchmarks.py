"""The speed benchmarks run end to end (a random-weight SmolLM2 shape, a few rows, bf16 autocast forced
so spul's one-time cast of the frozen weights is exercised beside the standard candidates)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--random-shape", "smollm2-135m", "--rounds", "1", "--precision", "bf16"]


def run_benchmark(script: str, args: list[str], shared_data: Path, out: Path) -> dict:
    """Run benchmarks/`script` in a fresh process; its saved JSON result."""
    command = [sys.executable, str(ROOT / "benchmarks" / script), *TINY, *args]
    command += ["--data-dir", str(shared_data), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.integration
def test_eval_benchmark_times_spul_and_both_standard_candidates(shared_data, tmp_path):
    result = run_benchmark(
        "bench_eval.py", ["--rows", "8", "--batch-size", "4", "--prompt-tokens", "4"], shared_data,
        tmp_path / "eval.json",
    )  # fmt: skip
    assert set(result["examples_per_s"]) == {"spul_engine", "standard_fp32", "standard_autocast"}
    assert all(rate > 0 for rate in result["examples_per_s"].values())


@pytest.mark.integration
def test_train_benchmark_times_spul_and_both_standard_candidates(shared_data, tmp_path):
    args = ["--batch-size", "4", "--steps", "1", "--p", "4"]
    result = run_benchmark("bench_train.py", args, shared_data, tmp_path / "train.json")
    assert set(result["examples_per_s"]) == {"spul", "standard_fp32", "standard_bf16"}
    assert all(rate > 0 for rate in result["examples_per_s"].values())
    assert set(result["peak_memory_gb"]) == set(result["examples_per_s"])
