"""The real SmolLM2: a short LoRA fine-tune, then SPUL's default recipe makes it forget its forget rows.

Point thresholds on a few seeded rows (about 3 minutes on 2 CPU cores, so it runs in CI): after
unlearning, most trained forget rows lose their label, and forget ACC falls at least 1.5x as far as
retain ACC. At this size SPUL is not selective enough to keep retain within a few points
(docs/results.md, benchmarks/bench_small_forgetting.py: fine-tuned 78.1 / 75.0 train retain / forget,
unlearned 50.0 / 9.4 on an AMD AVX512 host), so the test asks for the ratio, not for retain kept.
Teaching the generic word to the retain rows instead (the forget/retain flag swap) fails both thresholds.
"""

from __future__ import annotations

import pytest
import torch

from spul.data import load_data
from spul.methods.recipes import DEFAULT_RECIPE, recipe_settings
from spul.models import load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.training import TrainConfig

LIMIT = {"train_retain": 64, "train_forget": 32, "test_retain": 32, "test_forget": 32}


def accuracies(folder, data) -> dict[str, float]:
    """Served ACC per split of a saved artifact."""
    table = load_unlearned(folder, device="cpu", precision="fp32").evaluate(data, show_progress=False)
    return {split: metrics["acc"] for split, metrics in table.items()}


@pytest.mark.integration
def test_real_smollm2_forgets_the_forget_rows_and_keeps_the_retain_rows(shared_data, tmp_path):
    torch.manual_seed(0)
    data = load_data("sst2-paper", data_dir=shared_data, limit=LIMIT, seed=0)
    lm = load_model("smollm2-135m", device="cpu", precision="fp32")
    finetune = TrainConfig(epochs=2, batch_size=16, lr=1e-3, seed=0)
    train_artifact(
        "finetune", lm, data, tmp_path / "ft", method_options={"r": 8}, config=finetune, show_progress=False
    )
    options, config = recipe_settings(DEFAULT_RECIPE, {"epochs": 10}, seed=0)
    tuned = load_model("smollm2-135m", adapter=tmp_path / "ft", device="cpu", precision="fp32")
    train_artifact(
        "spul", tuned, data, tmp_path / "spul", method_options=options, config=config, show_progress=False
    )
    before, after = accuracies(tmp_path / "ft", data), accuracies(tmp_path / "spul", data)
    print("fine-tuned", before, "unlearned", after)
    assert before["train_forget"] >= 70  # the fine-tune taught the labels
    # fp32 kernels differ between CPU kinds, and so does the prompt these 32 + 64 rows train: unlearned train
    # forget / retain 9.4 / 50.0 on an AMD AVX512 host, forget 37.5 on an AMD AVX2-only one, 37.5 / 57.8 on
    # an Intel AMX one (from 75.0 / 78.1; one forget row = 3.1 points). So the thresholds say what every
    # kind shows: most forget rows lose their label, and forget ACC falls at least 1.5x as far as retain's.
    assert after["train_forget"] <= 50
    forgot = before["train_forget"] - after["train_forget"]
    lost = before["train_retain"] - after["train_retain"]
    assert forgot >= 1.5 * lost
