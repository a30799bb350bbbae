"""An in-memory, per-text cache for slow per-text functions (NER, embeddings): each unique text runs once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class PerText(Generic[T]):
    """Wrap `fn(texts) -> one result per text` so repeated and already-seen texts are not recomputed."""

    def __init__(self, fn: Callable[[Sequence[str]], Sequence[T]]) -> None:
        self.fn = fn
        self.cache: dict[str, T] = {}

    def __call__(self, texts: Sequence[str]) -> list[T]:
        """Results for `texts`, computing only the unique texts not seen before (in first-seen order)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            results = self.fn(missing)
            if len(results) != len(missing):
                raise ValueError(f"{len(results)} results for {len(missing)} texts")
            self.cache.update(zip(missing, results, strict=True))
        return [self.cache[t] for t in texts]
