"""The speed benchmarks run end to end (a random-weight toy body with SmolLM2's vocabulary, a few rows, bf16
autocast forced so spul's one-time cast of the frozen weights is exercised beside the standard candidates;
skipped on a CPU without native bf16, where the emulated bf16 runs took over 6 minutes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from spul.models import cpu_has_fast_bf16

ROOT = Path(__file__).resolve().parents[1]
# forced bf16 is emulated on a CPU without AVX512-BF16 / AMX: there even the toy body took over 6 minutes
needs_fast_bf16 = pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no native bf16")
TINY = ["--random-shape", "smoke", "--rounds", "1", "--precision", "bf16"]


def run_benchmark(script: str, args: list[str], shared_data: Path, out: Path) -> dict:
    """Run benchmarks/`script` in a fresh process; its saved JSON result."""
    command = [sys.executable, str(ROOT / "benchmarks" / script), *TINY, *args]
    command += ["--data-dir", str(shared_data), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@needs_fast_bf16
@pytest.mark.integration
def test_eval_benchmark_times_spul_and_both_standard_candidates(shared_data, tmp_path):
    result = run_benchmark(
        "bench_eval.py", ["--rows", "8", "--batch-size", "4", "--prompt-tokens", "4"], shared_data,
        tmp_path / "eval.json",
    )  # fmt: skip
    assert set(result["examples_per_s"]) == {"spul_engine", "standard_fp32", "standard_autocast"}
    assert all(rate > 0 for rate in result["examples_per_s"].values())


@needs_fast_bf16
@pytest.mark.integration
def test_train_benchmark_times_spul_and_both_standard_candidates(shared_data, tmp_path):
    args = ["--batch-size", "4", "--steps", "1", "--p", "4"]
    result = run_benchmark("bench_train.py", args, shared_data, tmp_path / "train.json")
    assert set(result["examples_per_s"]) == {"spul", "standard_fp32", "standard_bf16"}
    assert all(rate > 0 for rate in result["examples_per_s"].values())
    assert set(result["peak_memory_gb"]) == set(result["examples_per_s"])


def _memorisation_module():
    """benchmarks/bench_memorisation.py as a module (benchmarks/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_memorisation", ROOT / "benchmarks" / "bench_memorisation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memorisation_summary_measures_each_seed_against_its_own_retrained_model():
    module = _memorisation_module()
    seed_summary = module.seed_summary

    def table(spul: float, retrain: float) -> dict:
        return {"gated SPUL": {"label_loss": {"auc": spul}}, "retrain": {"label_loss": {"auc": retrain}}}

    # seed 0: 0.60 vs 0.50 (gap 0.10); seed 1: 0.45 vs 0.55 (gap 0.10, below retrain): mean AUCs alike,
    # gaps not (a gap from the mean AUCs would say 0.00)
    summary = seed_summary({0: table(0.60, 0.50), 1: table(0.45, 0.55)})
    cell = summary["gated SPUL"]["label_loss"]
    assert cell["auc_mean"] == pytest.approx(0.525)
    assert cell["auc_std"] == pytest.approx(0.1060660, abs=1e-6)
    assert cell["gap_mean"] == pytest.approx(0.10) and cell["gap_std"] == pytest.approx(0.0, abs=1e-12)
    assert summary["retrain"]["label_loss"]["gap_mean"] is None
    one = seed_summary({3: table(0.7, 0.5)})["gated SPUL"]["label_loss"]
    assert one["auc_std"] == 0.0 and one["gap_mean"] == pytest.approx(0.2)
    # no signal at all is as far from retrain as retrain is from chance: 0.05 and 0.05
    tables = {0: table(0.60, 0.45), 1: table(0.45, 0.55)}
    chance = seed_summary({seed: module.with_chance(t) for seed, t in tables.items()})
    assert list(chance) == ["gated SPUL", module.CHANCE, "retrain"]
    assert chance[module.CHANCE]["label_loss"]["gap_mean"] == pytest.approx(0.05)


def test_memorisation_spul_step_draws_the_rows_asked_for():
    from argparse import Namespace

    module = _memorisation_module()
    base = dict(model="m", retain=64, forget=64, epochs=10, lr=1e-3, name="x", spul_args="--gate")
    limit = lambda command: command[command.index("--limit") + 1]  # noqa: E731

    plain = Namespace(**base, forget_all=False, spul_retain=None)
    steps = module.seed_steps(plain, Path("o"), ["--seed", "1"])
    assert list(steps) == ["finetuned", "x", "retrain"]
    assert limit(steps["finetuned"]) == limit(steps["x"]) == limit(steps["retrain"])
    assert steps["x"][-1] == "--gate"
    assert steps["x"][steps["x"].index("--adapter") + 1] == str(Path("o/finetuned"))
    covering = module.seed_steps(Namespace(**base, forget_all=True, spul_retain=1000), Path("o"), [])
    assert limit(covering["x"]) == "train_retain=1000"  # every forget row, 1,000 retain rows
    assert limit(covering["finetuned"]) == "train_retain=64,train_forget=64"  # the fine-tune unchanged
