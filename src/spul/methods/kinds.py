"""Artifact kinds as a registry: how a saved artifact of each kind is loaded and used at inference.

A kind is registered beside the method that makes it: `prompt` (methods/soft_prompt.py), `adapter`
(methods/lora.py), `weights` (methods/weights.py), `context` (methods/icul.py), `guard` (methods/guard.py).
Code that loads or serves an artifact asks its kind (`get_kind(manifest["kind"])`) instead of branching on
the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from spul.artifacts import check_base_model, model_fingerprint
from spul.engine import PrefixKV
from spul.errors import SpulError
from spul.guardrails import Guard
from spul.models import LoadedModel, load_model
from spul.prompting import Encoder, Template, Verbalizer
from spul.suffix import SuffixPrompt


@dataclass
class Attached:
    """What an artifact puts on its loaded model at inference (None: nothing of that)."""

    encoder: Encoder | None = None  # replaces the plain template's encoder (in-context demonstrations)
    prompt: torch.Tensor | SuffixPrompt | None = None  # soft-prompt embeddings [p, hidden], or a suffix
    prompt_states: PrefixKV | None = None  # their key/value states in every layer, computed once
    guard: Guard | None = None  # decides per query whether its action applies (spul.guardrails.apply_guard)


class ArtifactKind:
    """One artifact kind. The default: applied over the recorded base model, adding nothing at inference."""

    name: ClassVar[str]
    # True when the artifact leaves the loaded base model as it is (a prompt, a context): that model is the
    # "Fine-tuned" reference, and another artifact of such a kind over the same weights can reuse it.
    shares_base_model: ClassVar[bool] = False

    def load_model(
        self, folder: Path, manifest: dict[str, Any], *, model: str | None, adapter: str | None, **load: Any
    ) -> LoadedModel:
        """The model that answers (default: the base model, checked to be the one trained on)."""
        return load_base_model(folder, manifest, model=model, adapter=adapter, **load)

    def attach(self, lm: LoadedModel, folder: Path, template: Template, verbalizer: Verbalizer) -> Attached:
        """What the artifact adds over its loaded model at inference (default: nothing)."""
        return Attached()


def base_adapter_of(manifest: dict[str, Any], adapter: str | None) -> str | None:
    """The fine-tuned base's adapter: the one given, else the one recorded at training."""
    return adapter if adapter is not None else manifest["base_model"].get("adapter")


def load_base_model(
    folder: Path, manifest: dict[str, Any], *, model: str | None, adapter: str | None, **load: Any
) -> LoadedModel:
    """The base model an artifact was trained over (its adapter merged), refused if its weights differ."""
    base = manifest["base_model"]
    base_adapter = base_adapter_of(manifest, adapter)
    if base_adapter is not None and not Path(base_adapter).is_dir():
        raise SpulError(
            f"{folder} was trained over the adapter {base_adapter}, which is not there; pass --adapter"
        )
    lm = load_model(model or base["spec"], adapter=base_adapter, **load)
    check_base_model(manifest, model_fingerprint(lm.model), folder)
    return lm


ARTIFACT_KINDS: dict[str, ArtifactKind] = {}


def register_kind(cls: type[ArtifactKind]) -> type[ArtifactKind]:
    """Class decorator adding an artifact kind under its `name` (a taken name is refused)."""
    if cls.name in ARTIFACT_KINDS:
        raise ValueError(f"artifact kind {cls.name!r} is already registered")
    ARTIFACT_KINDS[cls.name] = cls()
    return cls


def get_kind(name: Any, folder: str | Path = "artifact") -> ArtifactKind:
    """The registered kind of an artifact, with a clear error naming the folder and the known kinds."""
    if name not in ARTIFACT_KINDS:
        raise SpulError(f"{folder}: unknown artifact kind {name!r} (known: {', '.join(ARTIFACT_KINDS)})")
    return ARTIFACT_KINDS[name]
