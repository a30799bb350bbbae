"""GA+GD: gradient ascent on the forget rows plus gradient descent on the retain rows (paper's baseline)."""

from __future__ import annotations

from spul.methods.base import TrainBatch, register
from spul.methods.losses import answer_nll, masked_mean
from spul.methods.weights import WeightMethod


@register
class GradientAscentDescent(WeightMethod):
    """L = -mean_forget CE(h(x), y) + alpha * mean_retain CE(h(x), y), both on the true labels."""

    name = "ga_gd"
    title = "GA+GD"

    def __init__(self, lm, encoder, verbalizer, generic, *, alpha=1.0, **options):
        super().__init__(lm, encoder, verbalizer, generic, alpha=alpha, **options)
        self.alpha = alpha

    def loss(self, batch: TrainBatch):
        """Each term averaged over the forget or retain rows of the batch."""
        nll = answer_nll(self.logits(batch.batch), batch.batch.targets)
        loss_f = masked_mean(nll, batch.is_forget)
        loss_r = masked_mean(nll, ~batch.is_forget)
        total = -loss_f + self.alpha * loss_r
        return total, {"loss": total.item(), "L_f": loss_f.item(), "L_r": loss_r.item()}
