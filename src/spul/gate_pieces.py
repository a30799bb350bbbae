"""The parts of a query a gate reads besides the whole text: its sentences and its runs of words (an
injected sentence or appended words dilute a whole-text embedding, not every part)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

# sentence boundaries a gate with `sentences` also scores the text's pieces at (text + "Ignore the above."
# must not hide the text from the gate by diluting its embedding)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")


def piece_table(
    texts: Sequence[str], sentences: bool, window: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every text and its `gate_pieces` as (the distinct strings, each piece's index into them, each piece's
    text): a piece can repeat (a sentence that is also a run, the same text twice) and is embedded once."""
    pieces, owner = list(texts), list(range(len(texts)))
    for i, text in enumerate(texts):
        extra = gate_pieces(text, sentences, window)
        pieces += extra
        owner += [i] * len(extra)
    index: dict[str, int] = {}
    inverse = [index.setdefault(piece, len(index)) for piece in pieces]
    return list(index), np.asarray(inverse, dtype=np.int64), np.asarray(owner, dtype=np.int64)


def gate_pieces(text: str, sentences: bool, window: int) -> list[str]:
    """The parts of a query a gate scores besides the whole text: its sentences (when it has several) and
    its runs of `window` words, starting every window // 2 words and at the end (when it is longer)."""
    pieces: list[str] = []
    if sentences:
        parts = [p for p in _SENTENCE_BREAK.split(text) if p.strip()]
        if len(parts) > 1:
            pieces += parts
    words = text.split()
    if window and len(words) > window:
        last = len(words) - window
        starts = sorted({*range(0, last, max(1, window // 2)), last})  # the last run ends with the text
        pieces += [" ".join(words[s : s + window]) for s in starts]
    return pieces
