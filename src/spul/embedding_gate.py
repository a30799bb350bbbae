"""The embedding gate: a logistic regression on sentence embeddings, forget (1) vs retain (0) training rows,
whose thresholds (flag, and optionally refuse) are chosen on out-of-fold scores of those rows. It scores
vectors; `spul.guardrails.TextGate` embeds texts and their pieces for it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spul.errors import SpulError

MINILM = "all-MiniLM-L6-v2"  # the packaged sentence embedder, every gate's default


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
        c: float = 1.0,
    ) -> tuple[EmbeddingGate, np.ndarray]:
        """`fit`, and each training row's out-of-fold score (forget rows first): what the gate would score
        that row had it not been trained on it. `groups` (one id per row, forget rows first) keeps rows of
        one group in one fold: rewritten copies of a row are scored by a gate that saw none. `pieces`
        (vectors, the row each belongs to): a row's score is the highest of its own and its pieces', as a
        gate reading pieces scores it, and the thresholds are chosen on those scores. `refuse` (0-1): the
        refusal threshold lets at most that share of the retain rows through, out of fold (0: none). `c`:
        the logistic regression's inverse regularisation strength (lower: a smoother fit of its rows)."""
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

        x = np.concatenate([forget_vectors, retain_vectors]).astype(np.float64)
        y = np.concatenate([np.ones(len(forget_vectors)), np.zeros(len(retain_vectors))])
        if len(forget_vectors) < folds or len(retain_vectors) < folds:
            raise SpulError(f"the gate needs at least {folds} forget and {folds} retain training rows")
        if not 0 <= refuse < 1:
            raise SpulError(f"the gate's refusal share must be in [0, 1), got {refuse}")
        if not c > 0:
            raise SpulError(f"the gate's regularisation C must be > 0, got {c}")
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed)
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
