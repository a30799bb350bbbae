"""GA+GD: gradient ascent on the forget rows plus gradient descent on the retain rows (paper's baseline).

Its loss is the pattern of the methods with a retain term (as open-unlearning's GradDiff): a forget term
plus alpha times a retain term. GA+KL overrides the retain term (KL to the model before unlearning), NPO
the forget term; the rest (the alpha option, the sum, the logged terms) is inherited.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spul.methods.base import TrainBatch, register
from spul.methods.config import option
from spul.methods.losses import answer_nll, masked_mean
from spul.methods.weights import WeightConfig, WeightMethod


@dataclass
class RetainTermConfig(WeightConfig):
    """The weight options plus alpha, the weight of the retain term."""

    alpha: float = option(1.0, "weight of the retain term", flag="--alpha")


@register
class GradientAscentDescent(WeightMethod):
    """L = -mean_forget CE(h(x), y) + alpha * mean_retain CE(h(x), y), both on the true labels."""

    name = "ga_gd"
    title = "GA+GD"
    config_class = RetainTermConfig
    trains_on = "all rows"
    objective = "`-CE_forget + alpha * CE_retain`"
    retain_name = "L_r"  # the retain term's name in the logged terms

    def forget_term(self, logits: torch.Tensor, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Minus the mean answer cross-entropy of the forget rows (and its logged value, L_f = the CE)."""
        loss_f = masked_mean(answer_nll(logits, batch.batch.targets), batch.is_forget)
        return -loss_f, {"L_f": loss_f.item()}

    def retain_term(self, logits: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        """The mean answer cross-entropy of the retain rows."""
        return masked_mean(answer_nll(logits, batch.batch.targets), ~batch.is_forget)

    def loss(self, batch: TrainBatch):
        """forget term + alpha * retain term, each averaged over the forget or retain rows of the batch."""
        logits = self.logits(batch.batch)
        forget, logged = self.forget_term(logits, batch)
        retain = self.retain_term(logits, batch)
        total = forget + self.config.alpha * retain
        return total, {"loss": total.item()} | logged | {self.retain_name: retain.item()}
