"""Soft prompts over the frozen model: the shared machinery of SPUL-like methods, and the `prompt`
artifact kind (a peft prompt folder applied in front of every query of the base model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model

from spul.engine import PrefixFn, answer_logits, prefix_kv
from spul.errors import SpulError
from spul.methods.base import Method
from spul.methods.config import MethodConfig, option
from spul.methods.kinds import ArtifactKind, Attached, register_kind
from spul.models import LoadedModel, cast_frozen_linears
from spul.prompting import Batch, Template, Verbalizer

PROMPT_TYPES = ("ptuning", "prompt-tuning")


def prompt_config(prompt_type: str, num_virtual_tokens: int, encoder_hidden: int, token_dim: int):
    """The peft config of a soft prompt: P-tuning (MLP re-parametrised, as the paper) or prompt tuning."""
    if prompt_type == "ptuning":
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=num_virtual_tokens,
            encoder_hidden_size=encoder_hidden,
            token_dim=token_dim,
        )
    if prompt_type == "prompt-tuning":
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens, token_dim=token_dim
        )
    raise SpulError(f"unknown prompt type {prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}")


@dataclass
class SoftPromptConfig(MethodConfig):
    """The soft prompt's shape and how it starts."""

    kind = "prompt"

    prompt_type: str = option("ptuning", "ptuning (the paper's) or prompt-tuning")
    num_virtual_tokens: int = option(30, "number of virtual tokens", flag="--p")
    encoder_hidden: int = option(128, "P-tuning MLP hidden size")
    init_prompt: str | None = option(None, "start from this saved prompt (needs --prompt-type prompt-tuning)")

    def check(self) -> None:
        """A known prompt type."""
        if self.prompt_type not in PROMPT_TYPES:
            raise SpulError(
                f"unknown prompt type {self.prompt_type!r}; choose one of {', '.join(PROMPT_TYPES)}"
            )

    def hyperparameters(self) -> dict[str, Any]:
        """The options; init_prompt only when used (other manifests stay as they were)."""
        out = super().hyperparameters()
        if out["init_prompt"] is None:
            del out["init_prompt"]
        return out


class SoftPromptMethod(Method):
    """Shared machinery of methods that train a soft prompt over the frozen model."""

    config_class = SoftPromptConfig

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        lm, c = self.lm, self.config
        token_dim = lm.model.get_input_embeddings().embedding_dim
        config = prompt_config(c.prompt_type, c.num_virtual_tokens, c.encoder_hidden, token_dim)
        # peft wraps the model without copying it; we use the prompt encoder and feed embeddings ourselves
        # (peft's own forward ignores position ids, which matters with padding).
        start = None
        if c.init_prompt:
            start = saved_prompt(lm, c.init_prompt, c.prompt_type, c.num_virtual_tokens)
        self.peft = get_peft_model(lm.model, config)
        self.peft.prompt_encoder.to(lm.device)
        if start is not None:
            with torch.no_grad():
                self.peft.prompt_encoder["default"].embedding.weight.copy_(start)

    def trainable(self) -> torch.nn.Module:
        """The prompt encoder (P-tuning MLP or plain embeddings)."""
        return self.peft.prompt_encoder

    def prompt(self) -> torch.Tensor:
        """The p virtual-token embeddings, [p, hidden]."""
        return self.peft.get_prompt(batch_size=1)[0]

    def prefix_fn(self) -> PrefixFn:
        """The current soft prompt."""
        return self.prompt

    def save(self, folder: Path) -> None:
        """Save as a peft adapter folder (loadable with PeftModel.from_pretrained)."""
        self.peft.save_pretrained(str(folder))

    def logits(self, batch: Batch, prompted: bool = True) -> torch.Tensor:
        """Answer-position logits with or without the soft prompt."""
        with self.lm.autocast():
            return answer_logits(self.lm.model, batch, self.prompt() if prompted else None)


def load_prompt_encoder(lm, folder: Path) -> PeftModel:
    """Attach a saved soft prompt (peft folder) to a loaded model."""
    peft = PeftModel.from_pretrained(lm.model, str(folder))
    peft.prompt_encoder.to(lm.device)
    peft.eval()
    return peft


def saved_prompt(lm, folder: str | Path, prompt_type: str, num_virtual_tokens: int) -> torch.Tensor:
    """The embeddings of a saved prompt, to continue training from (plain prompt tuning only).

    peft saves a P-tuning prompt as its output embeddings, without the MLP that made them, so training
    can continue from a saved prompt only as plain prompt tuning of those embeddings.
    """
    from safetensors.torch import load_file

    from spul.artifacts import check_base_model, model_fingerprint, read_manifest

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest.get("kind") != PromptKind.name:
        raise SpulError(f"--init-prompt {folder}: holds a {manifest.get('kind')}, not a soft prompt")
    check_base_model(manifest, model_fingerprint(lm.model), folder)
    if prompt_type != "prompt-tuning":
        raise SpulError(
            "--init-prompt continues a saved prompt as plain prompt tuning (peft saves a P-tuning prompt "
            "without its MLP): add --prompt-type prompt-tuning"
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise SpulError(f"--init-prompt {folder}: no adapter_model.safetensors")
    embeddings = load_file(str(weights)).get("prompt_embeddings")
    if embeddings is None or embeddings.dim() != 2:
        raise SpulError(f"--init-prompt {weights}: no prompt_embeddings tensor")
    if embeddings.shape[0] != num_virtual_tokens:
        raise SpulError(
            f"--init-prompt {folder} has {embeddings.shape[0]} virtual tokens: pass --p {embeddings.shape[0]}"
        )
    return embeddings.float()


@register_kind
class PromptKind(ArtifactKind):
    """A soft prompt put in front of every query of the base model, which stays as it is."""

    name = "prompt"
    shares_base_model = True

    def attach(self, lm: LoadedModel, folder: Path, template: Template, verbalizer: Verbalizer) -> Attached:
        """The prompt's embeddings and key/value states, computed once for every query."""
        peft = load_prompt_encoder(lm, folder)
        with torch.no_grad(), lm.autocast():
            # The prompt is fixed at inference: its embeddings and its key/value states in every layer
            # are computed once here and reused by every query (None where the model cannot share them).
            prompt = peft.get_prompt(batch_size=1)[0].detach()
            states = prefix_kv(lm.model, prompt)
        if lm.autocast_dtype is not None:
            # serving only reads the frozen weights: cast them once instead of at every query
            cast_frozen_linears(lm.model, lm.autocast_dtype)
        return Attached(prompt=prompt, prompt_states=states)
