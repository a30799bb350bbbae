"""Retrain: the exact-unlearning gold standard every method is judged against.

The memorisation recipe (`spul finetune`: LoRA, label tokens only) run from the untouched model on the
retain rows only, as if the forget rows had never been in the training data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spul.errors import SpulError
from spul.methods.base import register
from spul.methods.finetune import FinetuneConfig, LoraFinetune


@dataclass
class RetrainConfig(FinetuneConfig):
    """The `spul finetune` LoRA settings and training defaults."""

    def training_defaults(self) -> dict[str, Any]:
        """The `spul finetune` defaults: 2 epochs at lr 1e-4."""
        return {"epochs": 2, "lr": 1e-4}


@register
class Retrain(LoraFinetune):
    """LoRA fine-tuning of the untouched (vanilla) model on train_retain only."""

    name = "retrain"
    title = "Retrain"
    config_class = RetrainConfig
    from_untouched_model = True
    baseline = True
    unlearns = True  # the exact-unlearning reference: answers as every unlearned model does
    trains_on = "retain rows, from the untouched model"
    objective = "the `spul finetune` recipe (LoRA)"

    def __init__(self, lm, *args: Any, **options: Any):
        if lm.adapter is not None:
            raise SpulError(
                f"retrain starts from the untouched model, but {lm.name} has the adapter {lm.adapter} "
                "merged; load the model without --adapter"
            )
        super().__init__(lm, *args, **options)

    def items(self, texts, labels, is_forget, seed):
        """The true label of every retain row; the forget rows are left out."""
        keep = [i for i, forget in enumerate(is_forget) if not forget]
        if not keep:
            raise SpulError("retrain: there are no retain rows to train on")
        return super().items([texts[i] for i in keep], [labels[i] for i in keep], [False] * len(keep), seed)

    def selection_score(self, table):
        """Mean ACC on the retain splits (the forget splits must not steer the gold standard)."""
        retain = [m["acc"] for name, m in table.items() if "retain" in name]
        return sum(retain) / len(retain) if retain else 0.0
