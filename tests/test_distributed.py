"""Data-parallel training (torchrun / accelerate launch) on 2 CPU processes equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

# Runs the CLI with `spul.training.collate` wrapped to record, per process, the row indices of each step.
RECORDER = """
import json, os, sys
import spul.training as training
from spul.cli import main

seen, collate = [], training.collate
def recording(items, method, indices, *args, **kwargs):
    seen.append([int(i) for i in indices])
    return collate(items, method, indices, *args, **kwargs)
training.collate = recording
try:
    main()
finally:
    with open(os.path.join(os.environ["ROWS_DIR"], "rank%s.json" % os.environ.get("RANK", "0")), "w") as f:
        json.dump(seen, f)
"""


def run(args, nproc=None, rows_dir=None):
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    entry = ["-m", "spul"]
    if rows_dir is not None:
        script = rows_dir / "recorder.py"
        script.write_text(RECORDER)
        env["ROWS_DIR"] = str(rows_dir)
        entry = [str(script)]
    prefix = [sys.executable, *entry]
    if nproc:
        prefix = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *entry]
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
    (tmp_path / "rows-one").mkdir()
    (tmp_path / "rows-two").mkdir()
    run([*common, "--out", tmp_path / "one"], rows_dir=tmp_path / "rows-one")
    both = run([*common, "--out", tmp_path / "two"], nproc=2, rows_dir=tmp_path / "rows-two")
    # each process takes its own half of every step's rows, and together they take the one-process rows
    (one_rows,) = [json.loads(p.read_text()) for p in sorted((tmp_path / "rows-one").glob("rank*.json"))]
    ranks = [json.loads(p.read_text()) for p in sorted((tmp_path / "rows-two").glob("rank*.json"))]
    assert len(ranks) == 2 and len(one_rows) == len(ranks[0]) == len(ranks[1]) == 6  # 24 rows / 8, 2 epochs
    for step, rows in enumerate(one_rows):
        assert len(rows) == 8 and len(ranks[0][step]) == len(ranks[1][step]) == 4
        assert not set(ranks[0][step]) & set(ranks[1][step])
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(rows)
    assert both.stdout.count("Label-only ACC") == 1  # only the first process reports (its two tables)
    assert both.stdout.count("| model |") == 2
    one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)
    assert any(v.abs().sum() > 0 for k, v in one.items() if "lora_B" in k)  # it did train
    # the averaged gradient (not the sum over processes) is what was clipped and stepped; Adam alone would
    # hide a missing division by the world size, the logged gradient norm does not
    norms = [
        [h["grad_norm"] for h in json.loads((tmp_path / name / "spul.json").read_text())["history"]]
        for name in ("one", "two")
    ]
    assert norms[0] and norms[1] == pytest.approx(norms[0], rel=1e-3)
