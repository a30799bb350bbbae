"""Guardrail baselines (Thaker et al. 2024; ECO, Liu et al. 2024): decide per query, before the model,
whether it is in the forget scope. A keyword filter derived from the forget set, and a gate: a linear
classifier over sentence embeddings trained on forget vs retain training rows.

At inference a `Guard` (a rule plus an action) is applied to the scores of its queries by `apply_guard`,
the one place the action is carried out: "generic" answers a flagged query with no label (OTHER) and
uniform label log-probabilities, so nothing about the label leaks; "prompt" (gated SPUL) gives a flagged
query the soft prompt, and a gate with a refusal threshold answers the queries scoring above it generic.
Gate embedders are looked up by name in `EMBEDDERS` (the packaged all-MiniLM-L6-v2 by default; tests add
a fake one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from spul.embedding_gate import MINILM, EmbeddingGate
from spul.engine import OTHER, Scores
from spul.errors import SpulError
from spul.gate_pieces import piece_table
from spul.io import write_json_atomic

GENERIC = "generic"  # the action of the filter and the gate: a flagged query gets the generic answer
PROMPT = "prompt"  # gated SPUL: a flagged query gets the soft prompt, the others the model alone
ACTIONS = (GENERIC, PROMPT)
Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, d) array
NAMES_FILE = "gate_names.json"  # a gate's names (TextGate.names), beside gate.json

_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def _words(text: str) -> set[str]:
    """The lower-cased words of a text, possessive endings removed."""
    return {re.sub(r"['’]s?$", "", w.lower()) for w in _WORD.findall(text)}


def read_json_object(path: Path) -> dict:
    """The JSON object in the file `path`; a SpulError naming the file when unreadable or not an object."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise SpulError(f"{path.parent}: unreadable {path.name}: {err}") from None
    if not isinstance(raw, dict):
        raise SpulError(f"{path}: expected a JSON object")
    return raw


@dataclass
class KeywordFilter:
    """Flags a query that contains any of `keywords` (whole words, case-insensitive) or matches `regex`."""

    keywords: tuple[str, ...] = ()
    regex: str | None = None
    source: str = "keywords"  # how the rule was derived (recorded in the artifact)

    @classmethod
    def derive(
        cls, forget: Sequence[str], retain: Sequence[str], finder=None, ratio: float = 10.0
    ) -> KeywordFilter:
        """The name words of the forget texts that are `ratio` times rarer in the retain texts.

        Names come from `finder` (default: spaCy's PERSON/ORG entities plus the lexicon the audit learns,
        which also catches lone lower-cased surnames; without spaCy, capitalised words).
        """
        from spul.audit.probes import EntityFinder

        finder = (finder or EntityFinder.create()).fit(forget, retain, ratio=ratio)
        return cls(tuple(sorted(finder.lexicon)), source=f"names ({finder.method})")

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        """True for each text the rule matches."""
        words = set(self.keywords)
        pattern = re.compile(self.regex, re.IGNORECASE) if self.regex else None
        return np.array(
            [bool(words & _words(t)) or bool(pattern and pattern.search(t)) for t in texts], dtype=bool
        )

    def to_json(self) -> dict:
        """The rule as JSON."""
        return {"keywords": list(self.keywords), "regex": self.regex, "source": self.source}

    @classmethod
    def read(cls, path: Path) -> KeywordFilter:
        """The rule in the file `path`, written from `to_json`."""
        return cls.from_json(read_json_object(path), str(path))

    @classmethod
    def from_json(cls, data: dict, where: str = "filter.json") -> KeywordFilter:
        """Read a rule written by `to_json`, checking its fields."""
        keywords = data.get("keywords", [])
        if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
            raise SpulError(f"{where}: 'keywords' must be a list of non-empty strings")
        regex = data.get("regex")
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as err:
                raise SpulError(
                    f"{where}: 'regex' {regex!r} is not a valid regular expression: {err}"
                ) from None
        return cls(tuple(keywords), regex, str(data.get("source", "keywords")))


class Flagger(Protocol):
    """Anything that flags texts: a KeywordFilter, a TextGate."""

    def flags(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class TextGate:
    """An EmbeddingGate over raw texts: embeds them with its embedder, then flags; with `names`, a text
    naming one of them is flagged too (words added to it cannot unflag it, as they can dilute a score),
    and with `names_refuse` refused (the generic answer outright) where its score flags it too."""

    gate: EmbeddingGate
    embed: Embedder
    names: KeywordFilter | None = None
    names_refuse: bool = False

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Each text's score: the highest of its whole text's and its pieces', its sentences (a `sentences`
        gate) and its runs of `window` words, half overlapping (a `window` gate)."""
        if not texts:
            return np.zeros(0)
        unique, inverse, owner = piece_table(texts, self.gate.sentences, self.gate.window)
        best = np.full(len(texts), -np.inf)
        np.maximum.at(best, owner, self.gate.scores(np.asarray(self.embed(unique)))[inverse])
        return best

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        """True for each text the gate flags (its score, or one of its pieces', reaches the threshold, or
        it names one of `names`)."""
        return self.bands(texts)[0]

    def bands(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each text's flag and refusal (its score reaches the refusal threshold), from one scoring."""
        flagged, refused = self.gate.bands(self.scores(texts))
        if self.names is not None:
            return self.named(texts, flagged, refused)
        return flagged, refused

    def named(
        self, texts: Sequence[str], flagged: np.ndarray, refused: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(flagged, refused) from the score's bands with the texts naming one of `names` flagged; with
        `names_refuse`, those the score flags too are refused (two signs of scope: a stray name word in
        an unrelated query gets the prompt, not the generic answer)."""
        hits = self.names.flags(texts)
        if self.names_refuse:
            refused = refused | (hits & flagged)
        return flagged | hits, refused

    def save(self, folder: Path) -> None:
        """The gate's files, and its names (NAMES_FILE) when it has them."""
        self.gate.save(folder)
        if self.names is not None:
            extra = {"refuse": True} if self.names_refuse else {}  # absent: flagged only, as before
            write_json_atomic(folder / NAMES_FILE, self.names.to_json() | extra)

    @classmethod
    def load(cls, folder: Path) -> TextGate:
        """The gate saved in `folder` by `save`, with its embedder loaded."""
        gate, names, refuse, path = EmbeddingGate.load(folder), None, False, folder / NAMES_FILE
        if path.is_file():
            raw = read_json_object(path)
            names, refuse = KeywordFilter.from_json(raw, str(path)), raw.get("refuse", False)
            if not isinstance(refuse, bool):
                raise SpulError(f"{path}: 'refuse' must be true or false, got {refuse!r}")
        return cls(gate, get_embedder(gate.embedder_name), names, refuse)


@dataclass
class Guard:
    """A per-query rule and what happens to the queries it flags (`action`, one of ACTIONS)."""

    rule: Flagger
    action: str = GENERIC

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise SpulError(f"unknown guard action {self.action!r} (known: {', '.join(ACTIONS)})")

    def flags(self, texts: Sequence[str]) -> np.ndarray:
        """True for each text the rule flags."""
        flags = np.asarray(self.rule.flags(texts), dtype=bool)
        if flags.shape != (len(texts),):
            raise SpulError(f"the guard's rule gave {flags.size} flags for {len(texts)} texts")
        return flags

    def bands(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each text's flag, and whether it is refused (the generic answer whatever the action: a gate's
        refusal threshold; other rules refuse nothing)."""
        if isinstance(self.rule, TextGate):
            return self.rule.bands(texts)
        return self.flags(texts), np.zeros(len(texts), dtype=bool)

    def decide(self, texts: Sequence[str]) -> Decision:
        """The guard's decision on each text, from one scoring of its rule."""
        flagged, refused = self.bands(texts)
        return Decision(flagged, flagged | refused if self.action == GENERIC else refused)


@dataclass(frozen=True)
class Decision:
    """A guard's decision per query: whether its rule flags it, and whether it is answered generic
    whatever the model would say (the flagged ones under "generic", the refused ones under "prompt"):
    those need no model at all."""

    flagged: np.ndarray
    generic: np.ndarray


def apply_guard(
    scores: Scores,
    texts: Sequence[str],
    guard: Guard | None,
    unprompted: Scores | None = None,
    decision: Decision | None = None,
) -> Scores:
    """`scores` with the guard's action on the rows it flags ("generic": OTHER and uniform label
    log-probabilities, loss log K; "prompt": `scores` are the prompted ones and the rows it does not flag
    take `unprompted`'s, the rows it refuses get the generic answer); unchanged without a guard.
    `decision`: the guard's decision on `texts` when already made."""
    if guard is None or len(texts) == 0:
        return scores
    decision = decision or guard.decide(texts)
    if guard.action == PROMPT:
        if unprompted is None:
            raise SpulError("a gated prompt needs the scores without the prompt too")
        keep = decision.flagged
        scores = Scores(
            np.where(keep, scores.predicted, unprompted.predicted),
            np.where(keep[:, None], scores.logprobs, unprompted.logprobs),
            np.where(keep, scores.loss, unprompted.loss),
        )
    return answer_generic(scores, decision.generic)


def answer_generic(scores: Scores, rows: np.ndarray) -> Scores:
    """`scores` with the `rows` (a boolean mask) answered generic and carrying nothing about the label:
    answer OTHER, uniform label log-probabilities, loss log K."""
    if not rows.any():
        return scores
    k = scores.logprobs.shape[1]
    predicted, logprobs, loss = scores.predicted.copy(), scores.logprobs.copy(), scores.loss.copy()
    predicted[rows] = OTHER
    logprobs[rows] = -np.log(k)
    loss[rows] = np.log(k)
    return replace(scores, predicted=predicted, logprobs=logprobs, loss=loss)


def withhold_label(scores: Scores) -> Scores:
    """The answer policy of an unlearned model: a generic (forgotten) answer comes with uniform label
    probabilities, so the response does not give the forgotten label back through its probabilities."""
    return answer_generic(scores, scores.predicted == OTHER)


def _minilm() -> Embedder:
    from spul.data.builders.cluster import sentence_embedder

    return sentence_embedder(show_progress=False)


# name -> a function that loads the embedder (called once per gate trained or loaded)
EMBEDDERS: dict[str, Callable[[], Embedder]] = {MINILM: _minilm}


def get_embedder(name: str) -> Embedder:
    """The named gate embedder, loaded (SpulError naming the known ones for an unknown name)."""
    if name not in EMBEDDERS:
        raise SpulError(f"unknown gate embedder {name!r} (known: {', '.join(sorted(EMBEDDERS))})")
    return EMBEDDERS[name]()
