"""NPO: negative preference optimisation (Zhang et al., 2024) on the forget rows.

L_npo = -(2 / beta) * mean_forget log sigmoid(-beta * (log p_theta(y|x) - log p_ref(y|x))), y the true label,
p_ref the model before unlearning. Its log-probs are one number per forget row, computed once before the
first step (with full fine-tuning and with LoRA alike). Optionally + alpha * retain CE (alpha defaults to 0:
plain NPO, trained on the forget rows only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spul.engine import sequence_logprob
from spul.errors import SpulError
from spul.methods.base import TrainBatch, TrainItem, register
from spul.methods.config import option
from spul.methods.ga_gd import GradientAscentDescent
from spul.methods.weights import WeightConfig, missing_reference


@dataclass
class NpoConfig(WeightConfig):
    """The weight options, NPO's inverse temperature, and alpha (0: plain NPO on the forget rows only)."""

    npo_beta: float = option(0.1, "NPO's inverse temperature", flag="--npo-beta")
    alpha: float = option(0.0, "weight of the retain CE (0: train on the forget rows only)", flag="--alpha")

    def check(self) -> None:
        """beta must be positive (and the LoRA options need lora)."""
        super().check()
        if self.npo_beta <= 0:
            raise SpulError(f"npo: beta must be positive, got {self.npo_beta}")


@register
class NegativePreference(GradientAscentDescent):
    """NPO on the forget rows' true labels, plus alpha * CE on the retain rows (the retain term of GA+GD)."""

    name = "npo"
    title = "NPO"
    config_class = NpoConfig
    trains_on = "forget rows (+ retain if alpha > 0)"
    objective = "`-(2/β) log σ(-β (log p(y\\|x) - log p_ref(y\\|x)))` + `alpha * CE_retain`"

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        self.reference: dict[int, float] = {}  # item index -> log p_ref(answer | prompt)

    @property
    def rows(self) -> str:
        """The retain rows are trained on only when they have a weight."""
        return "all" if self.config.alpha > 0 else "forget"

    def prepare(self, items: list[TrainItem], first: Sequence[int] = ()) -> None:
        """The untouched model's log-probability of each forget row's answer."""
        forget = [i for i, it in enumerate(items) if it.is_forget]
        for index, batch, logits in self.reference_batches(items, forget):
            values = sequence_logprob(logits, batch.targets).tolist()
            self.reference.update(zip(index, values, strict=True))

    def forget_term(self, logits: torch.Tensor, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """NPO over the forget rows of the batch, against their reference log-probabilities."""
        forget = batch.is_forget
        logp = sequence_logprob(logits, batch.batch.targets)
        loss_npo = logp.sum() * 0.0
        if forget.any():
            index = [i for i, f in zip(batch.batch.index, forget.tolist(), strict=True) if f]
            if any(i not in self.reference for i in index):
                raise missing_reference(self.name)
            ref = torch.tensor([self.reference[i] for i in index], device=logp.device)
            log_ratio = logp[forget] - ref
            beta = self.config.npo_beta
            loss_npo = -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()
        return loss_npo, {"L_npo": loss_npo.item()}
