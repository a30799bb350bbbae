"""The one LoRA (and QLoRA) setup, used by `finetune`/`retrain` and the `--lora` baselines, and the
`adapter` artifact kind: a LoRA adapter folder merged over the base model on load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training

from spul.methods.kinds import ArtifactKind, register_kind
from spul.models import LoadedModel, merge_adapter

DEFAULT_TARGETS = ("q_proj", "v_proj")


def attach_lora(
    lm: LoadedModel,
    *,
    r: int,
    lora_alpha: int,
    lora_dropout: float = 0.1,
    targets: list[str] | tuple[str, ...] = DEFAULT_TARGETS,
) -> PeftModel:
    """Inject LoRA layers into `lm.model` in place (so its own forward trains them); a 4-bit model is made
    trainable first (QLoRA)."""
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(targets),
    )
    if getattr(lm.model, "is_loaded_in_4bit", False):
        lm.model = prepare_model_for_kbit_training(lm.model, use_gradient_checkpointing=False)
    peft = get_peft_model(lm.model, config)
    peft.train()
    lm.cast_frozen()  # the base weights stay frozen: cast once under autocast, not at every call
    return peft


@register_kind
class AdapterKind(ArtifactKind):
    """A LoRA adapter: merged into the base model's weights on load (which then is the unlearned model)."""

    name = "adapter"

    def load_model(
        self, folder: Path, manifest: dict[str, Any], *, model: str | None, adapter: str | None, **load: Any
    ) -> LoadedModel:
        """The base model with the adapter merged."""
        lm = super().load_model(folder, manifest, model=model, adapter=adapter, **load)
        lm.model = merge_adapter(lm.model, folder).eval()
        return lm
