"""GA: gradient ascent on the cross-entropy of the true label of each forget row (paper's baseline)."""

from __future__ import annotations

from spul.methods.base import TrainBatch, register
from spul.methods.losses import answer_nll, masked_mean
from spul.methods.weights import WeightMethod


@register
class GradientAscent(WeightMethod):
    """L = -mean over forget rows of CE(h(x), y): the model is pushed away from the labels it learned."""

    name = "ga"
    title = "GA"
    rows = "forget"
    trains_on = "forget rows"
    objective = "`-CE(true label)` (gradient ascent)"

    def loss(self, batch: TrainBatch):
        """Minus the mean answer cross-entropy of the forget rows."""
        nll = answer_nll(self.logits(batch.batch), batch.batch.targets)
        loss_f = masked_mean(nll, batch.is_forget)
        return -loss_f, {"loss": -loss_f.item(), "L_f": loss_f.item()}
