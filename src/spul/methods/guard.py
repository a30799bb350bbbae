"""Guardrail baselines as methods: `filter` (a keyword rule) and `gate` (a linear classifier over sentence
embeddings), see spul.guardrails. Neither trains nor touches the model: the training rows (forget vs
retain) build a per-query rule, a query it flags gets the generic answer (no label, uniform label
probabilities) and every other query is answered by the model unchanged.

The artifact (kind `guard`) is `guard.json` (which rule, and its action) beside the rule's own files:
`filter.json`, or `gate.safetensors` + `gate.json`. A filter given the forget rule itself (a regex or
keywords; `spul unlearn` passes its --regex / --keywords) flags exactly what that rule selects.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from spul.data.rules import KeywordRule, RegexRule
from spul.embedding_gate import EmbeddingGate
from spul.errors import DataError, SpulError
from spul.gate_pieces import piece_table
from spul.guardrails import (
    EMBEDDERS,
    GENERIC,
    MINILM,
    Embedder,
    Flagger,
    Guard,
    KeywordFilter,
    TextGate,
    get_embedder,
)
from spul.io import write_json_atomic
from spul.methods.base import Method, TrainBatch, register
from spul.methods.config import UntrainedConfig, option
from spul.methods.kinds import ArtifactKind, Attached, register_kind
from spul.models import LoadedModel
from spul.progress import progress_bar
from spul.prompting import Template, Verbalizer

GUARD_FILE = "guard.json"
GUARD_FORMAT = "spul-guard/1"
FILTER_FILE = "filter.json"
NAME_RATIO = 10.0  # derived names: a name word is this many times more frequent in forget than retain rows


class GuardMethod(Method):
    """No training: the training rows build a rule, and the queries it flags get the generic answer."""

    action: ClassVar[str] = GENERIC  # what a flagged query gets (see spul.guardrails.apply_guard)

    def __init__(self, *args: Any, **options: Any):
        super().__init__(*args, **options)
        self.rule: Flagger | None = None
        self._nothing = torch.nn.Module()

    @abstractmethod
    def build(self, forget: list[str], retain: list[str], seed: int) -> Flagger:
        """The rule, from the forget and retain training texts."""

    @abstractmethod
    def save_rule(self, folder: Path) -> None:
        """Write the rule's own files into `folder`."""

    def items(self, texts, labels, is_forget, seed):
        """No training examples: the rows build the rule."""
        forget = [t for t, f in zip(texts, is_forget, strict=True) if f]
        retain = [t for t, f in zip(texts, is_forget, strict=True) if not f]
        if not forget:
            raise SpulError(f"{self.name}: there are no forget rows to build the guard from")
        self.rule = self.build(forget, retain, seed)
        return []

    def trainable(self) -> torch.nn.Module:
        """An empty module: nothing is trained."""
        return self._nothing

    def loss(self, batch: TrainBatch):
        """A guard does not train."""
        raise SpulError(f"{self.name} has no training loss: it only builds a rule")

    def inference_guard(self) -> Guard:
        """The rule with its action."""
        if self.rule is None:
            raise SpulError(f"{self.name}: give it the training rows (items) before evaluating")
        return Guard(self.rule, self.action)

    def save(self, folder: Path) -> None:
        """guard.json (which rule, its action) and the rule's own files."""
        write_guard(Path(folder), self.name, self.inference_guard().action)
        self.save_rule(Path(folder))


@dataclass
class FilterConfig(UntrainedConfig):
    """The filter's rule: a regex or keywords, else the names of the forget rows."""

    kind = "guard"

    regex: str | None = option(
        None,
        "flag queries this regex matches (case-insensitive) [default: spul unlearn's --regex / --keywords "
        "forget rule, else names derived from the forget rows]",
        flag="--filter-regex",
    )
    keywords: list[str] | None = option(
        None, "flag queries containing one of these words or phrases (whole words)", flag="--filter-keywords"
    )
    ratio: float = option(
        NAME_RATIO,
        "derived names: how many times more frequent in forget than retain rows",
        flag="--filter-ratio",
    )

    def check(self) -> None:
        """One rule at most, a valid one; a positive ratio."""
        if self.regex is not None and self.keywords is not None:
            raise SpulError("filter: give a regex or keywords, not both")
        try:
            self.rule()
        except DataError as err:
            raise SpulError(f"filter: {err}") from None
        if self.ratio <= 0:
            raise SpulError(f"filter: ratio must be positive, got {self.ratio}")

    def rule(self) -> KeywordFilter | None:
        """The filter of the given regex or keywords (the forget rule's own matching); None if neither."""
        if self.regex is not None:
            return KeywordFilter(regex=RegexRule(self.regex).pattern, source="regex")
        if self.keywords is not None:
            return KeywordFilter(regex=KeywordRule(self.keywords).pattern, source=f"keywords {self.keywords}")
        return None


@register
class KeywordFilterMethod(GuardMethod):
    """A keyword filter before the model: flagged queries get the generic answer; no training."""

    name = "filter"
    title = "Filter"
    config_class = FilterConfig
    trains_on = "nothing (a keyword rule: the forget rule, else forget-row names)"
    objective = "none; a query the rule flags gets the generic answer, the rest the model's own"

    def build(self, forget: list[str], retain: list[str], seed: int) -> KeywordFilter:
        """The given rule, else the name words of the forget rows that are rare in the retain rows."""
        rule = self.config.rule()
        if rule is not None:
            return rule
        fix = "give a rule with --filter-regex or --filter-keywords"
        return forget_names(forget, retain, self.config.ratio, self.name, fix)

    def save_rule(self, folder: Path) -> None:
        """filter.json: the keywords and regex."""
        write_json_atomic(folder / FILTER_FILE, self.rule.to_json())

    @staticmethod
    def load_rule(folder: Path) -> KeywordFilter:
        """The filter saved in `folder`."""
        return KeywordFilter.read(folder / FILTER_FILE)


def forget_names(forget: list[str], retain: list[str], ratio: float, who: str, fix: str) -> KeywordFilter:
    """The name words of the forget rows `ratio` times rarer in the retain rows (KeywordFilter.derive);
    a SpulError from `who` saying `fix` when there are none."""
    rule = KeywordFilter.derive(forget, retain, ratio=ratio)
    if not rule.keywords:
        raise SpulError(f"{who}: found no name words in the forget rows ({rule.source}); {fix}")
    return rule


@dataclass
class GateConfig(UntrainedConfig):
    """The gate's sentence embedder and the folds that choose its threshold."""

    kind = "guard"

    embedder: str = option(MINILM, "sentence embedder of the queries", flag="--gate-embedder")
    folds: int = option(5, "cross-validation folds choosing the threshold", flag="--gate-folds")

    def check(self) -> None:
        """A known embedder, at least two folds."""
        if self.embedder not in EMBEDDERS:
            known = ", ".join(sorted(EMBEDDERS))
            raise SpulError(f"gate: unknown embedder {self.embedder!r} (known: {known})")
        if self.folds < 2:
            raise SpulError(f"gate: folds must be at least 2, got {self.folds}")


# words per run a fitted gate also scores: appended words or an instruction after the text, with no sentence
# break, dilute the whole text's embedding, not a run of the text's own words (docs/results.md, "Word runs")
GATE_WINDOW = 8
EMBED_PART = 1024  # texts per embedder call while fitting a gate (sentence_embedder's own chunk)


# Same shape as KeywordFilterMethod: the registry's class attributes and a build(); only the values differ.
@register
class EmbeddingGateMethod(GuardMethod):
    """A classifier over sentence embeddings before the model: flagged queries get the generic answer."""

    name = "gate"
    title = "Gate"
    revision = 1  # 1: thresholds chosen on out-of-fold scores that read sentences and word runs, as served
    config_class = GateConfig
    trains_on = "a logistic regression on sentence embeddings, forget vs retain rows"
    objective = (
        "logistic loss; a query over the threshold (Youden's J, out of fold), or with a sentence or a run of "
        f"{GATE_WINDOW} words over it, gets the generic answer"
    )

    def build(self, forget: list[str], retain: list[str], seed: int) -> TextGate:
        """Embed the rows, fit the gate on forget (1) vs retain (0)."""
        return fit_text_gate(forget, retain, self.config.embedder, self.config.folds, seed)[0]

    def save_rule(self, folder: Path) -> None:
        """gate.safetensors (the weights) + gate.json (bias, threshold, embedder)."""
        self.rule.save(folder)

    @staticmethod
    def load_rule(folder: Path) -> TextGate:
        """The gate saved in `folder`, with its embedder loaded."""
        return TextGate.load(folder)


def fit_text_gate(
    forget: list[str],
    retain: list[str],
    embedder: str,
    folds: int,
    seed: int,
    recall: float | None = None,
    groups: np.ndarray | None = None,
    refuse: float = 0.0,
    c: float = 1.0,
    embed: Embedder | None = None,
) -> tuple[TextGate, np.ndarray]:
    """Embed the training rows and fit the gate on forget (1) vs retain (0) (`recall`, `groups`, `refuse`,
    `c`: see EmbeddingGate.fit_out_of_fold; `embed`: that embedder, already loaded); also each row's
    out-of-fold score (forget rows first). The gate reads each sentence of a query and its runs of
    GATE_WINDOW words (`gate_pieces`), and so are the training rows scored out of fold, where its
    thresholds are chosen."""
    if len(forget) < folds or len(retain) < folds:
        raise SpulError(
            f"gate: needs at least {folds} forget and {folds} retain training rows "
            f"(got {len(forget)} and {len(retain)})"
        )
    embed = embed or get_embedder(embedder)
    texts = forget + retain
    unique, inverse, owner = piece_table(texts, True, GATE_WINDOW)
    vectors = np.concatenate(  # the texts come first, in order
        [np.asarray(part) for part in _in_parts(embed, unique, "gate: embed")]
    )[inverse]
    n = len(texts)
    gate, scores = EmbeddingGate.fit_out_of_fold(
        vectors[: len(forget)],
        vectors[len(forget) : n],
        seed,
        folds,
        recall,
        groups,
        (vectors[n:], owner[n:]),
        refuse,
        c,
    )
    gate.embedder_name, gate.sentences, gate.window = embedder, True, GATE_WINDOW
    return TextGate(gate, embed), scores


def _in_parts(embed: Embedder, texts: list[str], description: str):
    """`embed` over `texts` in parts of EMBED_PART, with a progress bar. The MiniLM embedder encodes in
    parts of the same size, so the vectors are exactly those of one call."""
    with progress_bar(description, len(texts)) as advance:
        for start in range(0, len(texts), EMBED_PART):
            part = texts[start : start + EMBED_PART]
            yield embed(part)
            advance(len(part))


def write_guard(folder: Path, rule: str, action: str) -> None:
    """guard.json: which rule (its files beside it) and what a query it flags gets."""
    write_json_atomic(folder / GUARD_FILE, {"format": GUARD_FORMAT, "rule": rule, "action": action})


RULES: dict[str, Callable[[Path], Flagger]] = {
    KeywordFilterMethod.name: KeywordFilterMethod.load_rule,
    EmbeddingGateMethod.name: EmbeddingGateMethod.load_rule,
}


def load_guard(folder: str | Path) -> Guard:
    """The guard of a saved guard artifact: its rule and action."""
    path = Path(folder) / GUARD_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpulError(f"{folder} is a guard artifact without a readable {GUARD_FILE}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != GUARD_FORMAT:
        raise SpulError(f"{path}: unknown format (expected {GUARD_FORMAT})")
    load = RULES.get(raw.get("rule"))
    if load is None:
        raise SpulError(f"{path}: unknown rule {raw.get('rule')!r} (known: {', '.join(RULES)})")
    rule = load(Path(folder))
    try:
        return Guard(rule, raw.get("action", GENERIC))
    except SpulError as err:
        raise SpulError(f"{path}: {err}") from None


def with_forget_rule(
    method: type[Method], options: dict[str, Any], regex: str | None, keywords: Sequence[str] | str | None
) -> dict[str, Any]:
    """`options` plus the run's forget rule (regex or keywords) for a method taking one (the filter) that
    was given no rule of its own; other methods' options are returned as they are."""
    if not {"regex", "keywords"} <= method.option_names():
        return options
    if options.get("regex") is not None or options.get("keywords") is not None:
        return options
    if regex:
        return {"regex": regex} | options
    if keywords:
        return {"keywords": keywords} | options
    return options


@register_kind
class GuardKind(ArtifactKind):
    """A rule before the base model, which stays as it is: flagged queries get the generic answer."""

    name = "guard"
    shares_base_model = True

    def attach(self, lm: LoadedModel, folder: Path, template: Template, verbalizer: Verbalizer) -> Attached:
        """The guard the saved rule makes."""
        return Attached(guard=load_guard(folder))
