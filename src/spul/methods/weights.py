"""Shared machinery of the baselines that change the model's weights (GA, RL, GA+KL, GA+GD, NPO).

By default every weight of the model is trained (full fine-tuning, as in the paper's baselines) and the
artifact is the whole unlearned model (safetensors + tokenizer: a plain model folder). With `lora=True`
only a LoRA adapter is trained and saved, to be merged over the base model on load.

Full fine-tuning trains fp32 weights (half-precision weights, the CUDA default, are upcast). Under
precision `auto` those weights are trained and scored in fp32, without autocast: rounded to bf16 at every
matmul they are not the weights that were trained (see HALF_SCORING). An explicit `--precision bf16`
still trains and scores under bf16 autocast, with a warning.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spul.engine import answer_logits
from spul.errors import SpulError
from spul.methods.base import Method, TrainItem
from spul.methods.config import MethodConfig, option
from spul.methods.kinds import ArtifactKind, register_kind
from spul.methods.lora import attach_lora
from spul.models import LoadedModel, is_quantized, load_model
from spul.prompting import Batch, length_sorted_batches
from spul.reporting import warn

# Measured (docs/results.md, 2026-12-05): GA at lr 1e-8 scored under bf16 autocast lost 10 points of retain
# ACC on IMDB, the same model in fp32 none. bf16 keeps 8 significant bits. Weights that sit exactly half
# way between two bf16 values (6 % of the embedded SmolLM2's, dequantised from 4 bits) move a whole half
# step in the direction of any update, however small: a 1e-8 update acts like a 1e-4 one. Weights that are
# exact bf16 values (checkpoints saved in bf16) round small updates away instead. Either way the scored
# model is not the trained one.
HALF_SCORING = (
    "{name}: every weight trains in fp32, but under {computed} each is rounded to 8 significant bits "
    "at every matmul, so small updates are not scored as trained (they vanish or snap to a whole rounding "
    "step); use --precision fp32 or auto, which train and score whole-model weights in fp32"
)
FULL_LR, LORA_LR = 1e-5, 1e-4  # default peak learning rates (the paper searched them; so can --lr)
LORA_R, LORA_ALPHA = 16, 64  # the LoRA rank and alpha with lora=True


@dataclass
class WeightConfig(MethodConfig):
    """Full fine-tuning (default) or a LoRA adapter; 1 epoch, lr 1e-5 (1e-4 with LoRA)."""

    lora: bool = option(False, "train a LoRA adapter, not every weight", flag="--lora")
    r: int | None = option(None, f"LoRA rank (with --lora) [default: {LORA_R}]", flag="--lora-r")
    lora_alpha: int | None = option(None, f"LoRA alpha (with --lora) [default: {LORA_ALPHA}]")

    @property
    def kind(self) -> str:
        """A LoRA adapter with lora=True, else the whole unlearned model."""
        return "adapter" if self.lora else "weights"

    def check(self) -> None:
        """The LoRA rank and alpha need lora=True."""
        if not self.lora and (self.r is not None or self.lora_alpha is not None):
            raise SpulError("the LoRA rank and alpha only apply with lora=True (--lora)")
        self.require("r", self.r is None or self.r >= 1, ">= 1")
        self.require("lora_alpha", self.lora_alpha is None or self.lora_alpha >= 1, ">= 1")

    def training_defaults(self) -> dict[str, Any]:
        """One epoch (as the paper's baselines); lr 1e-5 for full fine-tuning, 1e-4 with LoRA."""
        return {"epochs": 1, "lr": LORA_LR if self.lora else FULL_LR}

    def hyperparameters(self) -> dict[str, Any]:
        """`lora`, the rank and alpha with LoRA only, then the method's own options."""
        out = super().hyperparameters()
        if self.lora:
            out |= {"lora": True, "r": self.r or LORA_R, "lora_alpha": self.lora_alpha or LORA_ALPHA}
        else:
            del out["r"], out["lora_alpha"]
        return out


class WeightMethod(Method):
    """A baseline trained on the model's own weights: every weight (default) or a LoRA adapter."""

    config_class = WeightConfig
    # Which rows a method trains on: "forget" (GA, RL) or "all" (forget and retain).
    rows: str = "all"
    revision = 1  # 1: whole-model weights trained and scored in fp32 under precision auto

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        lm, config = self.lm, self.config
        self.peft = None
        if config.lora:
            # LoRA layers are injected into lm.model in place, so lm.model's own forward trains them.
            self.peft = attach_lora(lm, r=config.r or LORA_R, lora_alpha=config.lora_alpha or LORA_ALPHA)
            self.module: torch.nn.Module = self.peft
        else:
            if is_quantized(lm.model):
                raise SpulError(f"{self.name}: full fine-tuning needs unquantised weights; use --lora")
            if lm.frozen_cast:  # rounded to the autocast dtype for inference: not the weights to train
                raise SpulError(f"{self.name}: full fine-tuning needs a freshly loaded model")
            dtype = next(lm.model.parameters()).dtype
            if dtype in (torch.float16, torch.bfloat16):
                lm.model.float()
            if weights_precision(lm.precision) == "fp32":
                lm.autocast_dtype = None  # trained as they are scored (WeightsKind.load_model)
            elif dtype == torch.bfloat16 and lm.autocast_dtype is None:
                lm.autocast_dtype = torch.bfloat16
            lm.model.requires_grad_(True)
            self.module = lm.model
            if lm.autocast_dtype is not None:
                warn(HALF_SCORING.format(name=self.name, computed=lm.compute_precision))
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


def weights_precision(precision: str) -> str:
    """The precision whole-model weights are trained and scored in: fp32 under `auto`, else as asked."""
    return "fp32" if precision == "auto" else precision


def missing_reference(name: str) -> SpulError:
    """The error of a loss asked for rows whose reference was never computed."""
    return SpulError(f"{name}: no reference for some rows; call prepare(items) on the untrained model first")


# Same shape as lora.AdapterKind (the ArtifactKind interface); what each loads differs.
@register_kind
class WeightsKind(ArtifactKind):
    """The whole unlearned model (a plain model folder): nothing to load it over."""

    name = "weights"

    def load_model(
        self, folder: Path, manifest: dict[str, Any], *, model: str | None, adapter: str | None, **load: Any
    ) -> LoadedModel:
        """The model in the artifact folder itself, in fp32 under precision `auto` (--model and --adapter
        are refused)."""
        if model is not None or adapter is not None:
            raise SpulError(f"{folder} holds the whole unlearned model; --model and --adapter do not apply")
        load["precision"] = weights_precision(load.get("precision", "auto"))
        return load_model(str(folder), **load)
