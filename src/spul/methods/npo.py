"""NPO: negative preference optimisation (Zhang et al., 2024) on the forget rows.

L_npo = -(2 / beta) * mean_forget log sigmoid(-beta * (log p_theta(y|x) - log p_ref(y|x))), y the true label,
p_ref the model before unlearning. Its log-probs are one number per forget row, computed once before the
first step (with full fine-tuning and with LoRA alike). Optionally + alpha * retain CE (alpha defaults to 0:
plain NPO, trained on the forget rows only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spul.engine import sequence_logprob
from spul.errors import SpulError
from spul.methods.base import TrainBatch, TrainItem, register
from spul.methods.losses import masked_mean
from spul.methods.weights import WeightMethod, missing_reference


@register
class NegativePreference(WeightMethod):
    """NPO on the forget rows' true labels, plus alpha * CE on the retain rows."""

    name = "npo"
    title = "NPO"

    def __init__(self, lm, encoder, verbalizer, generic, *, npo_beta=0.1, alpha=0.0, **options):
        if npo_beta <= 0:
            raise SpulError(f"npo: beta must be positive, got {npo_beta}")
        super().__init__(lm, encoder, verbalizer, generic, npo_beta=npo_beta, alpha=alpha, **options)
        self.beta, self.alpha = npo_beta, alpha
        self.rows = "all" if alpha > 0 else "forget"
        self.reference: dict[int, float] = {}  # item index -> log p_ref(answer | prompt)

    def prepare(self, items: list[TrainItem]) -> None:
        """The untouched model's log-probability of each forget row's answer."""
        forget = [i for i, it in enumerate(items) if it.is_forget]
        for index, batch, logits in self.reference_batches(items, forget):
            values = sequence_logprob(logits, batch.targets).tolist()
            self.reference.update(zip(index, values, strict=True))

    def loss(self, batch: TrainBatch):
        """NPO over the forget rows of the batch, CE over its retain rows."""
        forget, retain = batch.is_forget, ~batch.is_forget
        logp = sequence_logprob(self.logits(batch.batch), batch.batch.targets)
        loss_npo = logp.sum() * 0.0
        if forget.any():
            index = [i for i, f in zip(batch.batch.index, forget.tolist(), strict=True) if f]
            if any(i not in self.reference for i in index):
                raise missing_reference(self.name)
            ref = torch.tensor([self.reference[i] for i in index], device=logp.device)
            log_ratio = logp[forget] - ref
            loss_npo = -(2.0 / self.beta) * F.logsigmoid(-self.beta * log_ratio).mean()
        loss_r = masked_mean(-logp, retain)
        total = loss_npo + self.alpha * loss_r
        return total, {"loss": total.item(), "L_npo": loss_npo.item(), "L_r": loss_r.item()}
