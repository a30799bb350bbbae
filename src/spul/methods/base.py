"""The interface every training method implements, and the registry that names them."""

from __future__ import annotations

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
    # What the artifact is: "prompt" (a soft prompt over the frozen model) or "adapter" (changes weights).
    kind: ClassVar[str]

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

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the learned artifact (a peft adapter folder) into `folder`."""

    def selection_score(self, table: dict[str, dict[str, float]]) -> float:
        """Higher is better when choosing the best epoch (default: retain ACC minus forget ACC)."""
        return selection_score(table)

    def hyperparameters(self) -> dict[str, Any]:
        """The method's own options, as recorded in manifests."""
        return dict(self.options)


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
