"""RL: fine-tune the forget rows on random generic labels (paper's baseline)."""

from __future__ import annotations

import random

from spul.methods.base import TrainBatch, register
from spul.methods.losses import answer_nll, masked_mean
from spul.methods.weights import WeightMethod


@register
class RandomLabel(WeightMethod):
    """L = mean over forget rows of CE(h(x), y_bar), y_bar drawn once per row from the generic words."""

    name = "rl"
    title = "RL"
    rows = "forget"
    trains_on = "forget rows"
    objective = "`CE(random generic word)` (same seeded draws as SPUL)"

    def answer(self, label: int, forget: bool, rng: random.Random) -> tuple[int, ...]:
        """A generic word drawn per forget row (seeded; the same draws as SPUL's for the same seed)."""
        return rng.choice(self.generic.token_ids)

    def loss(self, batch: TrainBatch):
        """Mean answer cross-entropy of the forget rows on their random generic labels."""
        nll = answer_nll(self.logits(batch.batch), batch.batch.targets)
        loss_f = masked_mean(nll, batch.is_forget)
        return loss_f, {"loss": loss_f.item(), "L_f": loss_f.item()}
