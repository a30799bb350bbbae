"""Data-parallel training (torchrun / accelerate launch) on 2 CPU processes equals one process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file


def run(args, nproc=None):
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    prefix = [sys.executable, "-m", "spul"]
    if nproc:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "-m", "spul"]
    done = subprocess.run(
        prefix + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_two_processes_train_like_one(tmp_path, tiny_model_dir, toy_dir):
    # No dropout, 24 rows in batches of 8 split 4 + 4: averaged gradients equal the one-process gradients.
    common = [
        "finetune",
        "--model",
        tiny_model_dir,
        "--data",
        toy_dir,
        "--epochs",
        2,
        "--batch-size",
        8,
        "--lora-dropout",
        0,
        "--lora-r",
        4,
        "--lr",
        1e-2,
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "-q",
    ]
    run([*common, "--out", tmp_path / "one"])
    both = run([*common, "--out", tmp_path / "two"], nproc=2)
    assert both.stdout.count("Label-only ACC") == 1  # only the first process reports (its two tables)
    assert both.stdout.count("| model |") == 2
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)
    assert any(v.abs().sum() > 0 for k, v in one.items() if "lora_B" in k)  # it did train
