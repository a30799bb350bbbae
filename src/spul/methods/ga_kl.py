"""GA+KL: gradient ascent on the forget rows plus KL to the original model on the retain rows.

The reference is the model before unlearning, with no second copy of it:
- with LoRA, the same model with its adapter disabled (no grad), recomputed per batch;
- with full fine-tuning, the reference answer distributions of every retain row are computed once before
  the first step and kept on the CPU: rows x answer tokens x vocabulary x 4 bytes (fp32), e.g.
  4,000 rows x 49,152 (SmolLM2) = 0.8 GB, the full SST-2 retain split (46,331 rows) = 9.1 GB, versus a frozen
  model copy of 0.5 GB for SmolLM2 but 13.5 GB (fp16) for LLaMA-2-7B. Use --lora for large retain sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spul.methods.base import TrainBatch, TrainItem, register
from spul.methods.ga_gd import GradientAscentDescent
from spul.methods.losses import answer_kl
from spul.methods.weights import missing_reference
from spul.prompting import Batch


@register
class GradientAscentKL(GradientAscentDescent):
    """L = -mean_forget CE(h(x), y) + alpha * mean_retain KL(h(x) || h_0(x)) at the answer (full vocab)."""

    name = "ga_kl"
    title = "GA+KL"
    objective = "`-CE_forget + alpha * KL(model ‖ model before unlearning)_retain`"
    retain_name = "L_kl"

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        self.reference: dict[int, torch.Tensor] = {}  # item index -> [answer length, vocab] log-probs

    def prepare(self, items: list[TrainItem], first: Sequence[int] = ()) -> None:
        """Full fine-tuning: the untouched model's answer log-probs of every retain row (on the CPU)."""
        if self.peft is not None or self.config.alpha == 0:
            return
        retain = [i for i, it in enumerate(items) if not it.is_forget]
        for index, _, logits in self.reference_batches(items, retain):
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, i in enumerate(index):
                self.reference[i] = logprobs[row, -len(items[i].answer) :].clone()

    def reference_logits(self, batch: Batch) -> torch.Tensor:
        """The original model's answer log-probs (or logits) for the rows of a batch, [B, L, vocab]."""
        if self.peft is not None:
            with self.peft.disable_adapter(), torch.no_grad():
                return self.logits(batch)
        if any(i not in self.reference for i in batch.index):
            raise missing_reference(self.name)
        width = batch.targets.shape[1]
        vocab = self.reference[batch.index[0]].shape[-1]
        out = torch.zeros(len(batch.index), width, vocab)
        for row, i in enumerate(batch.index):
            ref = self.reference[i]
            out[row, width - ref.shape[0] :] = ref  # right-aligned like the targets; padding is masked
        return out.to(self.lm.device)

    def retain_term(self, logits: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        """The mean KL to the model before unlearning over the retain rows (0 with alpha 0)."""
        retain = ~batch.is_forget
        if self.config.alpha == 0 or not retain.any():
            return logits.sum() * 0.0
        ref_batch = batch.batch.select(retain)
        ref = self.reference_logits(ref_batch)
        return answer_kl(logits[retain], ref, ref_batch.targets).mean()
