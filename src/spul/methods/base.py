"""The interface every training method implements, and the registry that names them."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from spul.engine import PrefixFn
from spul.metrics import selection_score
from spul.models import LoadedModel
from spul.prompting import Batch, Encoder, Verbalizer


@dataclass
class TrainItem:
    """One training example: prompt tokens, the answer to teach, and whether it is forget data."""

    prompt: list[int]
    answer: tuple[int, ...]
    is_forget: bool


@dataclass
class TrainBatch:
    """A padded batch plus the forget flag of each row."""

    batch: Batch
    is_forget: torch.Tensor  # [B] bool


class Method(ABC):
    """A way to change a model's behaviour by training: LoRA fine-tuning, SPUL, a baseline."""

    name: ClassVar[str]
    # What the artifact is (see ARTIFACT_KINDS); a method may set it per instance (e.g. LoRA or full weights).
    kind: str
    # The name in result tables (default: the name in capitals).
    title: ClassVar[str | None] = None
    # True for methods that must start from the untouched model (retrain): the CLI drops --adapter.
    from_untouched_model: ClassVar[bool] = False

    def __init__(
        self, lm: LoadedModel, encoder: Encoder, verbalizer: Verbalizer, generic: Verbalizer, **options: Any
    ):
        self.lm = lm
        self.encoder = encoder
        self.verbalizer = verbalizer  # the task's label words
        self.generic = generic  # generic words (for forget targets), disjoint from the label words
        self.options = options

    @abstractmethod
    def items(self, texts: list[str], labels: list[int], is_forget: list[bool], seed: int) -> list[TrainItem]:
        """Training examples for the given rows (the answer each row should learn)."""

    @abstractmethod
    def trainable(self) -> torch.nn.Module:
        """The module whose parameters are optimised (its state is what checkpoints hold)."""

    @abstractmethod
    def loss(self, batch: TrainBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a batch and its logged terms."""

    def prefix_fn(self) -> PrefixFn | None:
        """The soft prompt to prepend at evaluation (None for methods that change weights)."""
        return None

    def inference_encoder(self) -> Encoder | None:
        """The encoder to evaluate with, when it differs from the plain template (in-context methods)."""
        return None

    def prepare(self, items: list[TrainItem]) -> None:
        """Called by the training loop once before the first step, on the untrained model (references)."""
        return None

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the learned artifact (soft prompt, adapter, weights or context) into `folder`."""

    def selection_score(self, table: dict[str, dict[str, float]]) -> float:
        """Higher is better when choosing the best epoch (default: retain ACC minus forget ACC)."""
        return selection_score(table)

    def hyperparameters(self) -> dict[str, Any]:
        """The method's own options, as recorded in manifests."""
        return dict(self.options)

    @classmethod
    def display_name(cls) -> str:
        """The method's name in result tables (e.g. GA+KL)."""
        return cls.title or cls.name.upper()

    @classmethod
    def option_names(cls) -> set[str]:
        """The keyword options the constructor takes (collected up the class tree through **options)."""
        names: set[str] = set()
        for klass in cls.__mro__:
            if klass is Method:
                break
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return names

    @classmethod
    def training_defaults(cls, options: dict[str, Any]) -> dict[str, Any]:
        """TrainConfig fields this method changes by default (e.g. 1 epoch for the baselines)."""
        return {}


# What a saved artifact holds: a soft prompt over the base model, a LoRA adapter over it,
# the full unlearned weights, or in-context demonstrations (no weights).
ARTIFACT_KINDS = ("prompt", "adapter", "weights", "context")


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under its `name`."""
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """Look a method up by name, with a clear error listing the known ones."""
    from spul.errors import SpulError

    if name not in METHODS:
        raise SpulError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]
