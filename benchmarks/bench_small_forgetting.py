"""SPUL on a CI-sized real problem: can a few minutes of CPU give a selective forget? (issue 12's test).

A LoRA fine-tune of SmolLM2-135M on 64 train-retain + 32 train-forget rows of sst2-paper, then SPUL's
default recipe and variants of it; prints served ACC per split (32 rows each) of every model.

    SPUL_DATA_DIR=../shared/data python benchmarks/bench_small_forgetting.py --out runs/small
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from spul.data import load_data
from spul.methods.recipes import DEFAULT_RECIPE, recipe_settings
from spul.models import load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.training import TrainConfig

LIMIT = {"train_retain": 64, "train_forget": 32, "test_retain": 32, "test_forget": 32}
# name -> (training overrides, method option overrides) over the default recipe
VARIANTS = {
    "fast, 10 epochs": ({"epochs": 10}, {}),
    "fast": ({}, {}),
    "fast, alpha 3": ({}, {"alpha": 3.0}),
    "fast, alpha 2, beta 2": ({}, {"alpha": 2.0, "beta": 2.0}),
}


def accuracies(folder: Path, data) -> dict[str, float]:
    """Served ACC per split of a saved artifact."""
    table = load_unlearned(folder, device="cpu", precision="fp32").evaluate(data, show_progress=False)
    return {split: round(metrics["acc"], 1) for split, metrics in table.items()}


def main() -> None:
    """Fine-tune once, unlearn with each variant, print one line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/small"))
    args = parser.parse_args()
    data = load_data("sst2-paper", data_dir=os.environ.get("SPUL_DATA_DIR"), limit=LIMIT, seed=0)
    finetuned = args.out / "finetuned"
    torch.manual_seed(0)
    lm = load_model("smollm2-135m", device="cpu", precision="fp32")
    config = TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=0)
    train_artifact(
        "finetune", lm, data, finetuned, method_options={"r": 8}, config=config, show_progress=False
    )
    print("fine-tuned", accuracies(finetuned, data), flush=True)
    for name, (training, options) in VARIANTS.items():
        method, config = recipe_settings(DEFAULT_RECIPE, training, seed=0)
        tuned = load_model("smollm2-135m", adapter=finetuned, device="cpu", precision="fp32")
        folder = args.out / name.replace(", ", "-").replace(" ", "")
        train_artifact(
            "spul", tuned, data, folder, method_options=method | options, config=config, show_progress=False
        )
        print(name, accuracies(folder, data), flush=True)


if __name__ == "__main__":
    main()
