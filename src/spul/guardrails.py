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
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from spul.engine import OTHER, Scores
from spul.errors import SpulError
from spul.gate_pieces import piece_table

GENERIC = "generic"  # the action of the filter and the gate: a flagged query gets the generic answer
PROMPT = "prompt"  # gated SPUL: a flagged query gets the soft prompt, the others the model alone
ACTIONS = (GENERIC, PROMPT)
Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, d) array
MINILM = "all-MiniLM-L6-v2"

_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def _words(text: str) -> set[str]:
    """The lower-cased words of a text, possessive endings removed."""
    return {re.sub(r"['’]s?$", "", w.lower()) for w in _WORD.findall(text)}


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


@dataclass
class EmbeddingGate:
    """Logistic regression on sentence embeddings: flags a query whose score reaches `threshold`."""

    weights: np.ndarray  # [dim]
    bias: float
    threshold: float
    embedder_name: str = MINILM
    sentences: bool = False  # also flag a text when one of its sentences is flagged (older gate.json: off)
    window: int = 0  # also flag a text when a run of this many words is flagged (0, older gate.json: off)
    # a gated prompt's query scoring at or above this gets the generic answer, not the prompt (None: off)
    refuse_threshold: float | None = None

    @classmethod
    def fit(
        cls,
        forget_vectors: np.ndarray,
        retain_vectors: np.ndarray,
        seed: int = 0,
        folds: int = 5,
        recall: float | None = None,
    ) -> EmbeddingGate:
        """Train on forget (1) vs retain (0) training rows; the threshold, from out-of-fold scores of those
        same training rows (no test row is looked at), maximises TPR - FPR or, given `recall`, is the
        highest that flags that share of the forget rows."""
        return cls.fit_out_of_fold(forget_vectors, retain_vectors, seed, folds, recall)[0]

    @classmethod
    def fit_out_of_fold(
        cls,
        forget_vectors: np.ndarray,
        retain_vectors: np.ndarray,
        seed: int = 0,
        folds: int = 5,
        recall: float | None = None,
        groups: np.ndarray | None = None,
        pieces: tuple[np.ndarray, np.ndarray] | None = None,
        refuse: float = 0.0,
    ) -> tuple[EmbeddingGate, np.ndarray]:
        """`fit`, and each training row's out-of-fold score (forget rows first): what the gate would score
        that row had it not been trained on it. `groups` (one id per row, forget rows first) keeps rows of
        one group in one fold: rewritten copies of a row are scored by a gate that saw none. `pieces`
        (vectors, the row each belongs to): a row's score is the highest of its own and its pieces', as a
        gate reading pieces scores it, and the thresholds are chosen on those scores. `refuse` (0-1): the
        refusal threshold lets at most that share of the retain rows through, out of fold (0: none)."""
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

        x = np.concatenate([forget_vectors, retain_vectors]).astype(np.float64)
        y = np.concatenate([np.ones(len(forget_vectors)), np.zeros(len(retain_vectors))])
        if len(forget_vectors) < folds or len(retain_vectors) < folds:
            raise SpulError(f"the gate needs at least {folds} forget and {folds} retain training rows")
        if not 0 <= refuse < 1:
            raise SpulError(f"the gate's refusal share must be in [0, 1), got {refuse}")
        model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=seed)
        if groups is None:
            split = StratifiedKFold(folds, shuffle=True, random_state=seed)
        else:
            split = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
        scores = np.empty(len(y))
        for train, held in split.split(x, y, groups):
            fold = clone(model).fit(x[train], y[train])
            scores[held] = fold.decision_function(x[held])
            mine = np.isin(pieces[1], held) if pieces is not None else None
            if mine is not None and mine.any():
                np.maximum.at(
                    scores, pieces[1][mine], fold.decision_function(pieces[0][mine].astype(np.float64))
                )
        if recall is None:
            threshold = _youden_threshold(scores, y)
        else:
            threshold = _recall_threshold(scores[y == 1], recall)
        refuse_threshold = max(threshold, _through_threshold(scores[y == 0], refuse)) if refuse else None
        model.fit(x, y)
        gate = cls(model.coef_[0].astype(np.float32), float(model.intercept_[0]), threshold)
        gate.refuse_threshold = refuse_threshold
        return gate, scores

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """The classifier's decision value of each vector (higher = more like the forget set)."""
        return vectors.astype(np.float64) @ self.weights.astype(np.float64) + self.bias

    def flags(self, vectors: np.ndarray) -> np.ndarray:
        """True where the score reaches the threshold."""
        return self.scores(vectors) >= self.threshold

    def bands(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where scores reach the flag threshold, and where they reach the refusal threshold."""
        return np.asarray(scores) >= self.threshold, self.refusals(scores)

    def refusals(self, scores: np.ndarray) -> np.ndarray:
        """True where a score reaches the refusal threshold (none without one)."""
        if self.refuse_threshold is None:
            return np.zeros(len(scores), dtype=bool)
        return np.asarray(scores) >= self.refuse_threshold

    def save(self, folder: Path) -> None:
        """gate.safetensors (the weights) + gate.json (bias, threshold, embedder)."""
        import torch
        from safetensors.torch import save_file

        save_file({"weights": torch.from_numpy(self.weights.copy())}, str(folder / "gate.safetensors"))
        meta = {
            "bias": self.bias,
            "threshold": self.threshold,
            "embedder": self.embedder_name,
            "sentences": self.sentences,
            "window": self.window,
            "refuse_threshold": self.refuse_threshold,
        }
        (folder / "gate.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> EmbeddingGate:
        """Read a gate written by `save`."""
        from safetensors.torch import load_file

        try:
            meta = json.loads((folder / "gate.json").read_text(encoding="utf-8"))
            weights = load_file(str(folder / "gate.safetensors"))["weights"].numpy()
            sentences = bool(meta.get("sentences", False))  # older gates score whole texts
            window = int(meta.get("window", 0))
            if window < 0:
                raise ValueError(f"window must be >= 0, got {window}")
            bias, threshold, embedder = float(meta["bias"]), float(meta["threshold"]), str(meta["embedder"])
            refuse = meta.get("refuse_threshold")  # older gates refuse nothing
            refuse = None if refuse is None else float(refuse)
            return cls(weights, bias, threshold, embedder, sentences, window, refuse)
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise SpulError(f"{folder}: unreadable gate (gate.json / gate.safetensors): {err}") from None


def _youden_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The score threshold maximising TPR - FPR (ties: the highest threshold, touching fewer queries)."""
    best, best_j = float(np.max(scores)) + 1e-9, -1.0
    pos, neg = max(1, int(y.sum())), max(1, int((1 - y).sum()))
    for t in np.unique(scores)[::-1]:
        flagged = scores >= t
        j = flagged[y == 1].sum() / pos - flagged[y == 0].sum() / neg
        if j > best_j + 1e-12:
            best, best_j = float(t), float(j)
    return best


def _recall_threshold(forget_scores: np.ndarray, recall: float) -> float:
    """The highest score threshold flagging at least `recall` (0-1] of the forget rows."""
    ranked = np.sort(forget_scores)[::-1]
    return float(ranked[max(0, math.ceil(recall * len(ranked) - 1e-9) - 1)])


def _through_threshold(retain_scores: np.ndarray, share: float) -> float:
    """The lowest score threshold that at most `share` (0-1) of the retain rows reach."""
    ranked = np.sort(retain_scores)[::-1]
    allowed = math.floor(share * len(ranked) + 1e-9)
    if allowed >= len(ranked):
        return -math.inf
    return float(np.nextafter(ranked[allowed], math.inf))


class Flagger(Protocol):
    """Anything that flags texts: a KeywordFilter, a TextGate."""

    def flags(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class TextGate:
    """An EmbeddingGate over raw texts: embeds them with its embedder, then flags."""

    gate: EmbeddingGate
    embed: Embedder

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
        """True for each text the gate flags (its score, or one of its pieces', reaches the threshold)."""
        return self.scores(texts) >= self.gate.threshold

    def bands(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each text's flag and refusal (its score reaches the refusal threshold), from one scoring."""
        return self.gate.bands(self.scores(texts))


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
