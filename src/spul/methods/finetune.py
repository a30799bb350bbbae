"""The paper's memorisation stage: LoRA fine-tuning with cross-entropy on the label token(s) only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spul.engine import answer_logits
from spul.methods.base import Method, TrainBatch, TrainItem, register
from spul.methods.config import MethodConfig, option
from spul.methods.lora import DEFAULT_TARGETS, attach_lora
from spul.methods.losses import answer_nll


@dataclass
class FinetuneConfig(MethodConfig):
    """LoRA settings of the memorisation recipe."""

    kind = "adapter"

    r: int = option(16, "LoRA rank", flag="--lora-r")
    lora_alpha: int = option(64, "LoRA alpha")
    lora_dropout: float = option(0.1, "LoRA dropout")
    targets: list[str] = option(list(DEFAULT_TARGETS), "module names to adapt")

    def check(self) -> None:
        """A positive rank and alpha, a dropout probability, at least one module to adapt."""
        self.require("r", self.r >= 1, ">= 1")
        self.require("lora_alpha", self.lora_alpha >= 1, ">= 1")
        self.require("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)")
        self.require("targets", any(t.strip() for t in self.targets), "at least one module name")


@register
class LoraFinetune(Method):
    """Teach the true label of every training row (retain and forget) through a LoRA adapter."""

    name = "finetune"
    config_class = FinetuneConfig
    baseline = False
    unlearns = False

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        c = self.config
        self.peft = attach_lora(
            self.lm, r=c.r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout, targets=c.targets
        )

    def items(self, texts, labels, is_forget, seed):
        """Every row learns its true label word."""
        prompts = self.encoder.encode(texts)
        return [
            TrainItem(p, self.verbalizer.token_ids[y], f)
            for p, y, f in zip(prompts, labels, is_forget, strict=True)
        ]

    def trainable(self) -> torch.nn.Module:
        """The peft model; only its LoRA weights require grad."""
        return self.peft

    def loss(self, batch: TrainBatch):
        """Mean answer cross-entropy over the batch."""
        with self.lm.autocast():
            logits = answer_logits(self.lm.model, batch.batch)
        loss = answer_nll(logits, batch.batch.targets).mean()
        return loss, {"loss": loss.item()}

    def selection_score(self, table):
        """Fine-tuning memorises everything: mean ACC over every evaluated split."""
        return sum(m["acc"] for m in table.values()) / len(table)

    def save(self, folder: Path) -> None:
        """Save the LoRA adapter folder (merge it on load with `--adapter`)."""
        self.peft.save_pretrained(str(folder))
