"""The real SmolLM2: a short LoRA fine-tune, then SPUL with the default recipe makes it forget.

Marked `slow` (minutes on 2 CPU cores, too long for CI): run it with `pytest -m slow`.

Point thresholds on a few rows (seeded): after unlearning, the trained forget rows are mostly answered with
a generic word, the trained retain rows keep their answers. The flag-swap mutation (teaching the generic
word to the retain rows) fails both thresholds.
"""

from __future__ import annotations

import pytest
import torch

from spul.data import load_data
from spul.methods.spul import DEFAULT_RECIPE, recipe_settings
from spul.models import load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.training import TrainConfig

LIMIT = {"train_retain": 64, "train_forget": 32, "test_retain": 32, "test_forget": 32}


@pytest.mark.integration
@pytest.mark.slow
def test_real_smollm2_forgets_the_forget_rows_and_keeps_the_retain_rows(shared_data, tmp_path):
    torch.manual_seed(0)
    data = load_data("sst2-paper", data_dir=shared_data, limit=LIMIT, seed=0)
    lm = load_model("smollm2-135m", device="cpu", precision="fp32")
    finetune = TrainConfig(epochs=1, batch_size=16, lr=1e-3, seed=0)
    train_artifact(
        "finetune", lm, data, tmp_path / "ft", method_options={"r": 8}, config=finetune, show_progress=False
    )
    options, config = recipe_settings(DEFAULT_RECIPE, {"epochs": 10}, seed=0)
    tuned = load_model("smollm2-135m", adapter=tmp_path / "ft", device="cpu", precision="fp32")
    train_artifact(
        "spul", tuned, data, tmp_path / "spul", method_options=options, config=config, show_progress=False
    )
    finetuned = load_unlearned(tmp_path / "ft", device="cpu", precision="fp32").evaluate(data)
    unlearned = load_unlearned(tmp_path / "spul", device="cpu", precision="fp32").evaluate(data)
    before = {s: m["acc"] for s, m in finetuned.items()}
    after = {s: m["acc"] for s, m in unlearned.items()}
    print("fine-tuned", before, "unlearned", after)
    assert before["train_forget"] >= 70  # the fine-tune taught the labels
    assert after["train_forget"] <= 30
    assert after["train_retain"] >= before["train_retain"] - 10
