"""SPUL: a soft prompt that makes the frozen model forget (Bhaila et al., 2024)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from spul.methods.base import TrainBatch, TrainItem, register
from spul.methods.config import option
from spul.methods.losses import answer_kl, answer_nll, masked_mean
from spul.methods.soft_prompt import SoftPromptConfig, SoftPromptMethod


@dataclass
class SpulConfig(SoftPromptConfig):
    """The soft prompt plus the weights of SPUL's retain and KL terms."""

    alpha: float = option(1.0, "weight of the retain term")
    beta: float = option(0.5, "weight of the KL to the unprompted model")


@register
class Spul(SoftPromptMethod):
    """L = L_f + alpha * L_r + beta * L_kl; forget rows learn a generic label, retain rows their true one."""

    name = "spul"
    config_class = SpulConfig
    baseline = False

    def items(self, texts, labels, is_forget, seed):
        """Forget rows get a generic word drawn once per row (seeded); retain rows keep their label."""
        rng = random.Random(seed)
        prompts = self.encoder.encode(texts)
        items = []
        for prompt, label, forget in zip(prompts, labels, is_forget, strict=True):
            answer = rng.choice(self.generic.token_ids) if forget else self.verbalizer.token_ids[label]
            items.append(TrainItem(prompt, answer, forget))
        return items

    def loss(self, batch: TrainBatch):
        """The three SPUL terms; each averaged over the forget or retain rows of the batch."""
        forget, retain = batch.is_forget, ~batch.is_forget
        logits = self.logits(batch.batch)
        nll = answer_nll(logits, batch.batch.targets)
        loss_f = masked_mean(nll, forget)
        loss_r = masked_mean(nll, retain)
        loss_kl = logits.sum() * 0.0
        if self.config.beta > 0 and retain.any():
            # The frozen model's own unprompted distribution, recomputed here with no grad: no second
            # copy of the model, and only a [retain rows, answer length, vocab] tensor at a time.
            ref_batch = batch.batch.select(retain)
            with torch.no_grad():
                ref = self.logits(ref_batch, prompted=False)
            loss_kl = answer_kl(logits[retain], ref, ref_batch.targets).mean()
        total = loss_f + self.config.alpha * loss_r + self.config.beta * loss_kl
        return total, {
            "loss": total.item(),
            "L_f": loss_f.item(),
            "L_r": loss_r.item(),
            "L_kl": loss_kl.item(),
        }
