"""Shared machinery of the baselines that change the model's weights (GA, RL, GA+KL, GA+GD, NPO).

By default every weight of the model is trained (full fine-tuning, as in the paper's baselines) and the
artifact is the whole unlearned model (safetensors + tokenizer: a plain model folder). With `lora=True`
only a LoRA adapter is trained and saved, to be merged over the base model on load.

Half-precision weights (the CUDA default) are upcast to fp32 for full fine-tuning, with bf16 autocast
where the weights were bf16: AdamW updates of ~1e-5 would otherwise round away in bf16 weights.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

from spul.engine import answer_logits
from spul.errors import SpulError
from spul.methods.base import Method, TrainItem
from spul.methods.finetune import DEFAULT_TARGETS
from spul.prompting import Batch, length_sorted_batches

FULL_LR, LORA_LR = 1e-5, 1e-4  # default peak learning rates (the paper searched them; so can --lr)


class WeightMethod(Method):
    """A baseline trained on the model's own weights: every weight (default) or a LoRA adapter."""

    kind = "weights"
    # Which rows a method trains on: "forget" (GA, RL) or "all" (forget and retain).
    rows: str = "all"

    def __init__(self, lm, encoder, verbalizer, generic, *, lora=False, r=None, lora_alpha=None, **options):
        if not lora and (r is not None or lora_alpha is not None):
            raise SpulError("the LoRA rank and alpha only apply with lora=True (--lora)")
        settings: dict[str, Any] = {"lora": bool(lora)}
        if lora:
            settings |= {"r": r or 16, "lora_alpha": lora_alpha or 64}
        super().__init__(lm, encoder, verbalizer, generic, **(settings | options))
        self.peft = None
        if lora:
            self.kind = "adapter"
            config = LoraConfig(
                task_type=TaskType.CAUSAL_LM,
                r=settings["r"],
                lora_alpha=settings["lora_alpha"],
                lora_dropout=0.1,
                target_modules=list(DEFAULT_TARGETS),
            )
            if getattr(lm.model, "is_loaded_in_4bit", False):
                lm.model = prepare_model_for_kbit_training(lm.model, use_gradient_checkpointing=False)
            # LoRA layers are injected into lm.model in place, so lm.model's own forward trains them.
            self.peft = get_peft_model(lm.model, config)
            self.module: torch.nn.Module = self.peft
        else:
            if getattr(lm.model, "is_loaded_in_4bit", False) or getattr(lm.model, "is_quantized", False):
                raise SpulError(f"{self.name}: full fine-tuning needs unquantised weights; use --lora")
            dtype = next(lm.model.parameters()).dtype
            if dtype in (torch.float16, torch.bfloat16):
                lm.model.float()
                if dtype == torch.bfloat16 and lm.autocast_dtype is None:
                    lm.autocast_dtype = torch.bfloat16
            lm.model.requires_grad_(True)
            self.module = lm.model
        self.module.train()

    def items(self, texts, labels, is_forget, seed):
        """Forget rows (and retain rows unless the method trains on the forget set only) with their answer."""
        rng = random.Random(seed)
        prompts = self.encoder.encode(texts)
        items = [
            TrainItem(prompt, self.answer(label, forget, rng), forget)
            for prompt, label, forget in zip(prompts, labels, is_forget, strict=True)
            if forget or self.rows == "all"
        ]
        if not any(it.is_forget for it in items):
            raise SpulError(f"{self.name} unlearns the forget rows, and there are none")
        return items

    def answer(self, label: int, forget: bool, rng: random.Random) -> tuple[int, ...]:
        """The answer a row is scored on (default: its true label word)."""
        return self.verbalizer.token_ids[label]

    def trainable(self) -> torch.nn.Module:
        """The whole model (full fine-tuning) or the peft model (only its LoRA weights require grad)."""
        return self.module

    def logits(self, batch: Batch) -> torch.Tensor:
        """Answer-position logits of the model being trained."""
        with self.lm.autocast():
            return answer_logits(self.lm.model, batch)

    def reference_batches(
        self, items: list[TrainItem], rows: list[int], batch_size: int = 32
    ) -> Iterator[tuple[list[int], Batch, torch.Tensor]]:
        """(item indices, batch, answer logits) of the model as it is now, without gradients."""
        was_training = self.module.training
        self.module.eval()
        try:
            for chunk in length_sorted_batches([len(items[i].prompt) for i in rows], batch_size):
                index = [rows[j] for j in chunk]
                batch = self.encoder.batch(
                    [items[i].prompt for i in index], [items[i].answer for i in index], index
                ).to(self.lm.device)
                with torch.no_grad():
                    logits = self.logits(batch)
                yield index, batch, logits
        finally:
            self.module.train(was_training)

    def save(self, folder: Path) -> None:
        """The LoRA adapter folder, or the whole model and its tokenizer as a plain model folder."""
        if self.peft is not None:
            self.peft.save_pretrained(str(folder))
            return
        self.lm.model.save_pretrained(str(folder))
        self.lm.tokenizer.save_pretrained(str(folder))

    @classmethod
    def training_defaults(cls, options: dict[str, Any]) -> dict[str, Any]:
        """One epoch (as the paper's baselines); lr 1e-5 for full fine-tuning, 1e-4 with LoRA."""
        return {"epochs": 1, "lr": LORA_LR if options.get("lora") else FULL_LR}


def missing_reference(name: str) -> SpulError:
    """The error of a loss asked for rows whose reference was never computed."""
    return SpulError(f"{name}: no reference for some rows; call prepare(items) on the untrained model first")
