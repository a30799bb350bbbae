"""GA+KL: gradient ascent on the forget rows plus KL to the original model on the retain rows.

The reference is the model before unlearning, with no second copy of it:
- with LoRA, the same model with its adapter disabled (no grad), recomputed per batch;
- with full fine-tuning, the reference answer distributions of every retain row are computed once before
  the first step and kept on the CPU: rows x answer tokens x vocabulary x 4 bytes (fp32), e.g.
  4,000 rows x 49,152 (SmolLM2) = 0.8 GB, the full SST-2 retain split (46,331 rows) = 9.1 GB, versus a frozen
  model copy of 0.5 GB for SmolLM2 but 13.5 GB (fp16) for LLaMA-2-7B. Use --lora for large retain sets.
"""

from __future__ import annotations

import torch

from spul.methods.base import TrainBatch, TrainItem, register
from spul.methods.losses import answer_kl, answer_nll, masked_mean
from spul.methods.weights import WeightMethod, missing_reference
from spul.prompting import Batch


@register
class GradientAscentKL(WeightMethod):
    """L = -mean_forget CE(h(x), y) + alpha * mean_retain KL(h(x) || h_0(x)) at the answer (full vocab)."""

    name = "ga_kl"
    title = "GA+KL"

    def __init__(self, lm, encoder, verbalizer, generic, *, alpha=1.0, **options):
        super().__init__(lm, encoder, verbalizer, generic, alpha=alpha, **options)
        self.alpha = alpha
        self.reference: dict[int, torch.Tensor] = {}  # item index -> [answer length, vocab] log-probs

    def prepare(self, items: list[TrainItem]) -> None:
        """Full fine-tuning: the untouched model's answer log-probs of every retain row (on the CPU)."""
        if self.peft is not None or self.alpha == 0:
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

    def loss(self, batch: TrainBatch):
        """Each term averaged over the forget or retain rows of the batch."""
        forget, retain = batch.is_forget, ~batch.is_forget
        logits = self.logits(batch.batch)
        loss_f = masked_mean(answer_nll(logits, batch.batch.targets), forget)
        loss_kl = logits.sum() * 0.0
        if self.alpha > 0 and retain.any():
            ref_batch = batch.batch.select(retain)
            ref = self.reference_logits(ref_batch)
            loss_kl = answer_kl(logits[retain], ref, ref_batch.targets).mean()
        total = -loss_f + self.alpha * loss_kl
        return total, {"loss": total.item(), "L_f": loss_f.item(), "L_kl": loss_kl.item()}
