"""In-memory unlearning data: four labelled splits plus the label words, with validation and sampling.

Validation policy: the same text in a forget split and a retain split is an error (unlearning would be
ill-defined; `strict_overlap=False` turns it into a warning). The paper's SST-2 splits have no such overlap.
Duplicates inside a split and texts shared by train and test (the paper's SST-2 has 166 between
train_retain and test_retain) are reported in `UnlearningData.warnings` with counts and kept.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from spul.errors import DataError

SPLITS = ("train_retain", "train_forget", "test_retain", "test_forget")
FORGET_SPLITS = ("train_forget", "test_forget")
RETAIN_SPLITS = ("train_retain", "test_retain")
DEFAULT_LABEL_WORDS = ("negative", "positive")
DEFAULT_GENERIC_WORDS = ("neutral", "unknown")
MAX_EXAMPLES = 3  # locations quoted in one error or warning message


def location(source: str, row: int, line_offset: int | None = 1) -> str:
    """Format a data row for messages: `file.csv, row 12 (line 13)` (row counts data rows from 1)."""
    if line_offset is None:
        return f"{source}, row {row}"
    return f"{source}, row {row} (line {row + line_offset})"


@dataclass
class Split:
    """One labelled split; `rows` holds the 1-based source row of each example for error messages."""

    name: str
    texts: list[str]
    labels: list[int]
    source: str
    rows: list[int] | None = None
    line_offset: int | None = 1  # file line = row + line_offset (1 for a header line; None: no lines)

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = list(range(1, len(self.texts) + 1))
        if not len(self.texts) == len(self.labels) == len(self.rows):
            raise ValueError(
                f"split {self.name}: {len(self.texts)} texts, {len(self.labels)} labels, "
                f"{len(self.rows)} rows"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def where(self, index: int) -> str:
        """Location of the example at `index` in its source, e.g. `train.csv, row 12 (line 13)`."""
        return location(self.source, self.rows[index], self.line_offset)

    def fingerprint(self) -> str:
        """sha256 over the texts and labels in order (never the text itself)."""
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(json.dumps([text, int(label)], ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def subset(self, indices: Iterable[int]) -> Split:
        """A new split with the examples at `indices`, in the order given."""
        idx = [int(i) for i in indices]
        return replace(
            self,
            texts=[self.texts[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            rows=[self.rows[i] for i in idx],
        )


def sample_indices(n: int, k: int, seed: int, stream: int) -> list[int]:
    """`k` of `range(n)` chosen by a seeded generator, returned in increasing (original) order."""
    if k >= n:
        return list(range(n))
    rng = np.random.default_rng([seed, stream])
    return sorted(int(i) for i in rng.choice(n, size=k, replace=False))


@dataclass
class UnlearningData:
    """The four splits of an unlearning task plus the verbaliser (label words) and generic words."""

    splits: dict[str, Split]
    label_words: tuple[str, ...] = DEFAULT_LABEL_WORDS
    generic_words: tuple[str, ...] = DEFAULT_GENERIC_WORDS
    name: str = "data"
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> Split:
        try:
            return self.splits[name]
        except KeyError:
            raise KeyError(f"no split {name!r}; splits are {', '.join(self.splits)}") from None

    # One named accessor per split (the paper's D_r, D_f and their test parts): four of one shape.
    @property
    def train_retain(self) -> Split:
        """The retain part of the training data (D_r)."""
        return self["train_retain"]

    @property
    def train_forget(self) -> Split:
        """The forget part of the training data (D_f)."""
        return self["train_forget"]

    @property
    def test_retain(self) -> Split:
        """Test examples from the retain distribution."""
        return self["test_retain"]

    @property
    def test_forget(self) -> Split:
        """Test examples from the forget distribution."""
        return self["test_forget"]

    @property
    def num_labels(self) -> int:
        """Number of classes (= number of label words)."""
        return len(self.label_words)

    def sizes(self) -> dict[str, int]:
        """Number of examples per split."""
        return {name: len(split) for name, split in self.splits.items()}

    def fingerprint(self) -> dict:
        """Per-split sha256 and size plus the label words; contains no text from the data."""
        return {
            "name": self.name,
            "label_words": list(self.label_words),
            "splits": {n: {"size": len(s), "sha256": s.fingerprint()} for n, s in self.splits.items()},
        }

    def sample(
        self, tau: float = 1.0, limit: int | Mapping[str, int] | None = None, seed: int = 0
    ) -> UnlearningData:
        """Keep a seeded fraction `tau` of train_forget, then cap splits at `limit` rows (order kept)."""
        if not 0.0 < tau <= 1.0:
            raise DataError(f"tau must be in (0, 1], got {tau}")
        limits = self._limits(limit)
        if tau == 1.0 and not limits:
            return self
        splits = dict(self.splits)
        if tau < 1.0:
            forget = splits["train_forget"]
            keep = max(1, round(tau * len(forget)))
            splits["train_forget"] = forget.subset(sample_indices(len(forget), keep, seed, stream=1000))
        for stream, name in enumerate(splits):
            if name in limits:
                split = splits[name]
                splits[name] = split.subset(sample_indices(len(split), limits[name], seed, stream))
        return replace(self, splits=splits, warnings=list(self.warnings))

    def cut(self, max_chars: int | None) -> UnlearningData:
        """Every text cut to `max_chars` characters (None: unchanged), e.g. long reviews on a CPU."""
        if max_chars is None:
            return self
        splits = {n: replace(s, texts=[t[:max_chars] for t in s.texts]) for n, s in self.splits.items()}
        return replace(self, splits=splits, warnings=list(self.warnings))

    def _limits(self, limit: int | Mapping[str, int] | None) -> dict[str, int]:
        """Normalise `limit` to a per-split dict, checking split names and values."""
        if limit is None:
            return {}
        limits = dict(limit) if isinstance(limit, Mapping) else dict.fromkeys(self.splits, limit)
        for name, value in limits.items():
            if name not in self.splits:
                raise DataError(f"limit names unknown split {name!r}; splits are {', '.join(self.splits)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DataError(f"limit for {name} must be a positive integer, got {value!r}")
        return limits

    def validate(self, strict_overlap: bool = True) -> UnlearningData:
        """Check splits, labels and words; raise DataError or append duplicate/overlap notes to `warnings`."""
        self._check_words()
        for name in SPLITS:
            if name not in self.splits:
                raise DataError(f"{self.name}: split {name} is missing")
            split = self.splits[name]
            if len(split) == 0:
                raise DataError(f"{self.name}: split {name} ({split.source}) is empty")
            self._check_labels(split)
        notes = _duplicate_notes(self.splits)
        overlap = _forget_retain_overlap(self.splits)
        if overlap:
            message = (
                f"{overlap[0]} text(s) occur in both a forget split and a retain split, "
                f"which makes unlearning ill-defined: {overlap[1]}"
            )
            if strict_overlap:
                raise DataError(f"{self.name}: {message}")
            notes.append(message)
        self.warnings.extend(note for note in notes if note not in self.warnings)
        return self

    def _check_words(self) -> None:
        """Label words: at least two, distinct; generic words disjoint from them."""
        check_words(self.label_words, self.generic_words)

    def _check_labels(self, split: Split) -> None:
        """Every label is an index into the label words."""
        for i, label in enumerate(split.labels):
            if not 0 <= label < len(self.label_words):
                raise DataError(
                    f"{split.where(i)}: label {label} outside 0..{len(self.label_words) - 1} "
                    f"(label words {list(self.label_words)})"
                )


def check_words(label_words: Sequence[str] | None, generic_words: Sequence[str] | None) -> None:
    """Label words: at least two, distinct; generic words: at least one, none a label word (None: unknown
    yet, not checked). DataError otherwise."""
    words = [w.strip().lower() for w in label_words or ()]
    if label_words is not None and (len(words) < 2 or len(set(words)) != len(words) or not all(words)):
        raise DataError(f"label words must be at least two distinct words, got {list(label_words)}")
    if generic_words is None:
        return
    generic = {w.strip().lower() for w in generic_words}
    if not generic or not all(generic):
        raise DataError(f"generic words must be at least one non-empty word, got {list(generic_words)}")
    clash = sorted(set(words) & generic)
    if clash:
        raise DataError(f"generic words {clash} are also label words {list(label_words)}")


def _examples(pairs: list[str], total: int) -> str:
    """Join the first few quoted locations, noting how many more there are."""
    more = f" (and {total - len(pairs)} more)" if total > len(pairs) else ""
    return "; ".join(pairs) + more


def _duplicate_notes(splits: Mapping[str, Split]) -> list[str]:
    """Warnings for texts repeated inside a split and shared between a train and a test split."""
    notes = []
    for name, split in splits.items():
        counts = Counter(split.texts)
        repeated = {t for t, c in counts.items() if c > 1}
        if repeated:
            labels: dict[str, set[int]] = {}
            for text, label in zip(split.texts, split.labels, strict=True):
                if text in repeated:
                    labels.setdefault(text, set()).add(label)
            conflicting = sum(1 for v in labels.values() if len(v) > 1)
            notes.append(
                f"{name}: {len(split) - len(counts)} duplicate row(s) ({len(repeated)} text(s) repeated, "
                f"{conflicting} with conflicting labels; {len(counts)} unique of {len(split)}); kept"
            )
    for kind in ("retain", "forget"):
        train, test = splits.get(f"train_{kind}"), splits.get(f"test_{kind}")
        if train is not None and test is not None:
            shared = set(train.texts) & set(test.texts)
            if shared:
                notes.append(f"{len(shared)} text(s) occur in both train_{kind} and test_{kind}; kept")
    return notes


def _forget_retain_overlap(splits: Mapping[str, Split]) -> tuple[int, str] | None:
    """Count texts present in a forget and a retain split, with example locations of both copies."""
    retained: dict[str, tuple[Split, int]] = {}
    for name in RETAIN_SPLITS:
        split = splits[name]
        for i, text in enumerate(split.texts):
            retained.setdefault(text, (split, i))
    found: dict[str, str] = {}
    for name in FORGET_SPLITS:
        split = splits[name]
        for i, text in enumerate(split.texts):
            if text in retained and text not in found:
                other, j = retained[text]
                found[text] = f"{name} at {split.where(i)} and {other.name} at {other.where(j)}"
    if not found:
        return None
    return len(found), _examples(list(found.values())[:MAX_EXAMPLES], len(found))
