"""The paper's memorisation stage: LoRA fine-tuning with cross-entropy on the label token(s) only."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

from spul.engine import answer_logits
from spul.methods.base import Method, TrainBatch, TrainItem, register
from spul.methods.losses import answer_nll

DEFAULT_TARGETS = ("q_proj", "v_proj")


@register
class LoraFinetune(Method):
    """Teach the true label of every training row (retain and forget) through a LoRA adapter."""

    name = "finetune"
    kind = "adapter"

    def __init__(
        self, lm, encoder, verbalizer, generic, *, r=16, lora_alpha=64, lora_dropout=0.1, targets=None
    ):
        targets = list(targets or DEFAULT_TARGETS)
        options = {"r": r, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "targets": targets}
        super().__init__(lm, encoder, verbalizer, generic, **options)
        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=targets,
        )
        if getattr(lm.model, "is_loaded_in_4bit", False):  # QLoRA: make the 4-bit model trainable
            lm.model = prepare_model_for_kbit_training(lm.model, use_gradient_checkpointing=False)
        # LoRA layers are injected into lm.model in place, so lm.model's own forward trains them.
        self.peft = get_peft_model(lm.model, config)
        self.peft.train()

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
