"""ICUL: in-context unlearning (Pawelczyk et al., 2023): no training, no weight changes.

Each query is preceded by `shots` demonstrations written in the prompt template with their label word:
first a forget row with a flipped label, then shots-1 retain rows with their true labels, then the query.

Protocol for evaluating whole splits (the paper unlearns one point at a time): a query that is itself a
forget row gets that very row as its flipped demonstration (the paper's setting); any other query gets a
forget row drawn at random. Retain demonstrations come from a seeded pool of retain rows, never the query
itself. The draws are seeded by (seed, query text): a text always gets the same context, in any order.
Each demonstration is truncated like a query: a prompt is at most shots + 1 times the encoder's max_length.

The artifact (`context.json`, beside `spul.json`) necessarily holds the forget rows' texts: the method works
by showing them to the model.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spul.errors import SpulError
from spul.io import write_json_atomic
from spul.methods.base import Method, TrainBatch, register
from spul.methods.config import UntrainedConfig, option
from spul.methods.kinds import ArtifactKind, Attached, register_kind
from spul.models import LoadedModel
from spul.prompting import Encoder, Template, Verbalizer

CONTEXT_FILE = "context.json"
CONTEXT_FORMAT = "spul-icul/1"
SEPARATOR = "\n\n"  # between demonstrations, and before the query


def flip(label: int, num_labels: int, rng: random.Random) -> int:
    """Another label than `label` (the other one for binary tasks, a random other one otherwise)."""
    return rng.choice([y for y in range(num_labels) if y != label])


@dataclass
class IculContext:
    """The demonstration pools and how a query's demonstrations are drawn from them."""

    forget: list[tuple[str, int]]  # forget rows with their true labels (shown flipped)
    retain: list[tuple[str, int]]  # pool of correctly labelled demonstrations
    shots: int
    seed: int
    num_labels: int
    _own: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._own = {text: i for i, (text, _) in enumerate(self.forget)}

    def demonstrations(self, text: str) -> list[tuple[str, int]]:
        """(text, label shown) pairs to put before the query: one flipped forget row, then retain rows."""
        rng = random.Random(f"{self.seed}:{text}")
        own = self._own.get(text)
        forget_text, label = self.forget[own] if own is not None else rng.choice(self.forget)
        demos = [(forget_text, flip(label, self.num_labels, rng))]
        want = min(self.shots - 1, len(self.retain))
        picks = rng.sample(range(len(self.retain)), min(want + 1, len(self.retain)))
        demos += [self.retain[i] for i in picks if self.retain[i][0] != text][:want]
        return demos

    def to_json(self) -> dict[str, Any]:
        """The context as JSON (labels as indices into the manifest's label words)."""
        return {
            "format": CONTEXT_FORMAT,
            "shots": self.shots,
            "seed": self.seed,
            "num_labels": self.num_labels,
            "forget": [list(row) for row in self.forget],
            "retain": [list(row) for row in self.retain],
        }

    @classmethod
    def load(cls, folder: str | Path) -> IculContext:
        """Read `context.json` of a saved ICUL artifact."""
        path = Path(folder) / CONTEXT_FILE
        if not path.is_file():
            raise SpulError(f"{folder} is an ICUL artifact without its {CONTEXT_FILE}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != CONTEXT_FORMAT:
                raise SpulError(f"{path}: unknown format {raw.get('format')!r} (expected {CONTEXT_FORMAT})")
            return cls(
                [(str(t), int(y)) for t, y in raw["forget"]],
                [(str(t), int(y)) for t, y in raw["retain"]],
                int(raw["shots"]),
                int(raw["seed"]),
                int(raw["num_labels"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise SpulError(f"{path}: not a valid ICUL context ({err})") from err


class ContextEncoder(Encoder):
    """Encodes each query after its demonstrations (template + label word each), ready for scoring."""

    def __init__(
        self,
        tokenizer,
        template: Template,
        verbalizer: Verbalizer,
        context: IculContext,
        max_length: int = 512,
    ):
        super().__init__(tokenizer, template, max_length)
        self.verbalizer = verbalizer
        self.context = context
        self._sep = tokenizer(SEPARATOR, add_special_tokens=False).input_ids
        # Special tokens the tokenizer puts first (BOS): kept once, at the very start of the prompt.
        plain = tokenizer(template.text.split("{text}")[0].rstrip(" "), add_special_tokens=False).input_ids
        extra = len(self._before) - len(plain)
        self._specials = extra if extra > 0 and self._before[extra:] == plain else 0
        self._cache: dict[tuple[str, int], list[int]] = {}

    def demonstration(self, text: str, label: int) -> list[int]:
        """Token ids of one demonstration: the prompt of `text`, the label word, the separator."""
        key = (text, label)
        if key not in self._cache:
            prompt = super().encode([text])[0][self._specials :]
            self._cache[key] = prompt + list(self.verbalizer.token_ids[label]) + self._sep
        return self._cache[key]

    def encode(self, texts):
        """Prompt token ids per text, each preceded by its demonstrations."""
        prompts = []
        for text, query in zip(texts, super().encode(texts), strict=True):
            demos = [t for demo in self.context.demonstrations(text) for t in self.demonstration(*demo)]
            prompts.append(query[: self._specials] + demos + query[self._specials :])
        return prompts


@dataclass
class IculConfig(UntrainedConfig):
    """How many demonstrations each query gets, and the size of the retain pool they come from."""

    kind = "context"

    shots: int = option(4, "demonstrations per query, the first flipped", flag="--icul-shots")
    retain_pool: int = option(1000, "retain rows kept as correctly labelled demonstrations")

    def check(self) -> None:
        """At least one shot: the flipped forget row."""
        if self.shots < 1:
            raise SpulError(f"icul: shots must be at least 1 (the flipped forget row), got {self.shots}")
        self.require("retain_pool", self.retain_pool >= 0, ">= 0")


# The class attributes every registered method declares (as npo.py and the others); values differ.
@register
class InContextUnlearning(Method):
    """Flipped-label forget demonstrations in the context; zero trainable parameters."""

    name = "icul"
    title = "ICUL"
    config_class = IculConfig
    trains_on = "nothing"
    objective = "flipped-label forget demonstration + k-1 retain demonstrations before each query"

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        self.context: IculContext | None = None
        self._nothing = torch.nn.Module()

    def items(self, texts, labels, is_forget, seed):
        """No training examples: the rows become the demonstration pools (retain pool sampled, seeded)."""
        forget = [(t, y) for t, y, f in zip(texts, labels, is_forget, strict=True) if f]
        retain = [(t, y) for t, y, f in zip(texts, labels, is_forget, strict=True) if not f]
        if not forget:
            raise SpulError("icul: there are no forget rows to put in the context")
        if self.config.shots > 1 and not retain:
            raise SpulError("icul: there are no retain rows for the correctly labelled demonstrations")
        pool = random.Random(seed).sample(retain, min(self.config.retain_pool, len(retain)))
        self.context = IculContext(forget, pool, self.config.shots, seed, len(self.verbalizer))
        return []

    def trainable(self) -> torch.nn.Module:
        """An empty module: nothing is trained."""
        return self._nothing

    def loss(self, batch: TrainBatch):
        """ICUL does not train."""
        raise SpulError("icul has no training loss: it only builds contexts")

    def inference_encoder(self) -> ContextEncoder:
        """The encoder that puts each query's demonstrations before it."""
        if self.context is None:
            raise SpulError("icul: give it the training rows (items) before evaluating")
        return ContextEncoder(
            self.lm.tokenizer, self.encoder.template, self.verbalizer, self.context, self.encoder.max_length
        )

    def save(self, folder: Path) -> None:
        """Write the demonstration pools to context.json (no weights)."""
        if self.context is None:
            raise SpulError("icul: nothing to save before items() was given the training rows")
        write_json_atomic(Path(folder) / CONTEXT_FILE, self.context.to_json())


def load_context_encoder(
    lm, folder: str | Path, template: Template, verbalizer: Verbalizer
) -> ContextEncoder:
    """The ContextEncoder of a saved ICUL artifact over a loaded model."""
    return ContextEncoder(lm.tokenizer, template, verbalizer, IculContext.load(folder))


@register_kind
class ContextKind(ArtifactKind):
    """Demonstrations put before every query of the base model, which stays as it is."""

    name = "context"
    shares_base_model = True

    def attach(self, lm: LoadedModel, folder: Path, template: Template, verbalizer: Verbalizer) -> Attached:
        """The encoder that puts each query's demonstrations before it."""
        return Attached(encoder=load_context_encoder(lm, folder, template, verbalizer))
