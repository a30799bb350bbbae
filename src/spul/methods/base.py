"""The interface every training method implements, and the registry that names them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from spul.engine import PrefixFn
from spul.errors import SpulError
from spul.guardrails import Guard
from spul.methods.config import MethodConfig, resolve
from spul.metrics import selection_score
from spul.models import LoadedModel
from spul.prompting import Batch, Encoder, Verbalizer


@dataclass
class TrainItem:
    """One training example: prompt tokens, the answer to teach, and whether it is forget data."""

    prompt: list[int]
    answer: tuple[int, ...]
    is_forget: bool
    label: int | None = None  # the row's true label (methods that check forgetting keep it)
    source: int | None = None  # the training row it was made from (an augmented copy's original)
    check_only: bool = False  # scored by the training check, never trained on (Selection.check_retain)
    focus: bool = False  # a retain row drawn more often (gated SPUL: one its gate serves the prompt)


@dataclass
class TrainBatch:
    """A padded batch plus the forget flag of each row."""

    batch: Batch
    is_forget: torch.Tensor  # [B] bool


class _Kind:
    """`Method.kind`: an instance's artifact kind, from its config (so `ga` with lora=True is "adapter");
    read on the class, the kind with default options."""

    def __get__(self, method: Method | None, cls: type[Method]) -> str:
        return (method.config if method is not None else cls.config_class()).kind


class Method(ABC):
    """A way to change a model's behaviour by training: LoRA fine-tuning, SPUL, a baseline.

    A method is one class with a `config_class` (its options, a MethodConfig dataclass), registered with
    `@register`. Construct it with a config (`config=`) or with the options as keywords.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # What the artifact is (see spul.methods.kinds), decided by the config.
    kind = _Kind()
    # The name in result tables (default: the name in capitals).
    title: ClassVar[str | None] = None
    # True for methods that must start from the untouched model (retrain): the CLI drops --adapter.
    from_untouched_model: ClassVar[bool] = False
    # A row of the README's baseline table: which rows it trains on and its loss (see spul.methods.docs).
    baseline: ClassVar[bool] = True
    # True for unlearning methods: their artifacts answer under the unlearned model's answer policy (a
    # generic answer withholds the label probabilities, spul.guardrails.withhold_label); not a fine-tune.
    unlearns: ClassVar[bool] = True
    trains_on: ClassVar[str] = ""
    objective: ClassVar[str] = ""
    # Raised when a change makes what the method trained or scored before stale: part of an experiment
    # cell's id when above 0, so finished cells of an earlier revision run again.
    revision: ClassVar[int] = 0
    # share of a balanced batch's retain rows drawn from the items marked `focus` (training.BatchPlan)
    focus_share: float = 0.0
    # decay of a running average of the trained weights that checks score and runs keep (training.train)
    weight_ema: float = 0.0

    @classmethod
    def revision_of(cls, options: dict[str, Any]) -> int:
        """The revision of a run with these options (a change may make only some of a method's runs stale)."""
        return cls.revision

    def __init__(
        self,
        lm: LoadedModel,
        encoder: Encoder,
        verbalizer: Verbalizer,
        generic: Verbalizer,
        config: MethodConfig | None = None,
        **options: Any,
    ):
        if config is not None and options:
            raise TypeError(f"{self.name}: pass a config or options, not both")
        self.config = config if config is not None else self.resolve(options)
        self.lm = lm
        self.encoder = encoder
        self.verbalizer = verbalizer  # the task's label words
        self.generic = generic  # generic words (for forget targets), disjoint from the label words

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

    def inference_guard(self) -> Guard | None:
        """The per-query guard to evaluate with (guardrail methods; None for the others)."""
        return None

    def training_check(
        self, items: list[TrainItem], seed: int
    ) -> tuple[Callable[[], tuple[float, bool, dict[str, float]]], set[int]] | None:
        """A cheap check for `TrainConfig.check_every`: (() -> (score, target reached, what it measured),
        the item indices it holds out of training); None where the method has none."""
        return None

    def check_items(self, texts: list[str], labels: list[int]) -> list[TrainItem]:
        """Retain rows for the training check alone (`check_only`), appended after `items`' rows."""
        raise SpulError(f"{self.name} has no training check to score extra retain rows with")

    def prepare(self, items: list[TrainItem], first: Sequence[int] = ()) -> None:
        """Called by the training loop once before the first step, on the untrained model (references);
        `first`: the rows to prepare first where not all fit (those the training check scores)."""
        return None

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the learned artifact (soft prompt, adapter, weights or context) into `folder`."""

    def selection_score(self, table: dict[str, dict[str, float]]) -> float:
        """Higher is better when choosing the best epoch (default: retain ACC minus forget ACC)."""
        return selection_score(table)

    def hyperparameters(self) -> dict[str, Any]:
        """The method's own options, as recorded in manifests."""
        return self.config.hyperparameters()

    @classmethod
    def display_name(cls) -> str:
        """The method's name in result tables (e.g. GA+KL)."""
        return cls.title or cls.name.upper()

    @classmethod
    def resolve(cls, given: dict[str, Any]) -> MethodConfig:
        """A checked config from given options (unknown names and ill-typed values refused)."""
        return resolve(cls.name, cls.config_class, given)

    @classmethod
    def option_names(cls) -> set[str]:
        """The names of the method's options (the fields of its config)."""
        return {f.name for f in fields(cls.config_class)}

    @classmethod
    def training_defaults(cls, options: dict[str, Any]) -> dict[str, Any]:
        """TrainConfig fields this method changes by default for these options (unknown ones ignored)."""
        names = cls.option_names()
        return cls.config_class(**{k: v for k, v in options.items() if k in names}).training_defaults()


METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under its `name` (a taken name is refused)."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} is already registered (by {METHODS[cls.name].__qualname__})")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, MethodConfig)):
        raise TypeError(f"method {cls.name!r}: config_class must be a MethodConfig dataclass")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """Look a method up by name, with a clear error listing the known ones."""
    if name not in METHODS:
        raise SpulError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def resolve_options(method_name: str, given: dict[str, Any] | None = None) -> MethodConfig:
    """The checked config of a method from given options (typed values, or text as `--method-args` gives)."""
    return get_method(method_name).resolve(dict(given or {}))
