"""Shared steps of the forget-set builders: read raw train/test files, pool and re-split, partition, write.

A builder turns raw labelled train/test files into the four-split folder that `load_data(folder)` reads:
`train_retain.csv`, `train_forget.csv`, `test_retain.csv`, `test_forget.csv` (columns `text,label` plus
`origin,origin_id`: the input file each row came from, `train` or `test`, and its 0-based data row there,
the same numbering as forget ids) and `prepare.json`, a manifest of how the folder was made.
"""

from __future__ import annotations

import csv
import hashlib
import io
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from spul.data.sources import read_split
from spul.data.splits import DEFAULT_GENERIC_WORDS, DEFAULT_LABEL_WORDS, SPLITS, Split, UnlearningData
from spul.errors import DataError
from spul.io import write_folder_atomic, write_json_atomic, write_text_atomic

MANIFEST = "prepare.json"
ROLES = ("train", "test")


@dataclass
class Rows:
    """Labelled texts with their origin: input file role (`train`/`test`) and 0-based data row there."""

    texts: list[str]
    labels: list[int]
    origin: list[str]
    origin_id: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int]) -> Rows:
        """The rows at `indices`, in the order given."""
        idx = [int(i) for i in indices]
        return Rows(
            [self.texts[i] for i in idx],
            [self.labels[i] for i in idx],
            [self.origin[i] for i in idx],
            [self.origin_id[i] for i in idx],
        )

    @classmethod
    def from_split(cls, split: Split, role: str) -> Rows:
        """All rows of a split read from the input file `role`."""
        return cls(list(split.texts), list(split.labels), [role] * len(split), list(range(len(split))))

    @classmethod
    def concat(cls, parts: Sequence[Rows]) -> Rows:
        """The rows of several parts one after another."""
        return cls(
            [t for p in parts for t in p.texts],
            [y for p in parts for y in p.labels],
            [o for p in parts for o in p.origin],
            [i for p in parts for i in p.origin_id],
        )


@dataclass
class Inputs:
    """The train and test rows a builder partitions, plus what the manifest records about the source files."""

    train: Rows
    test: Rows
    sources: dict[str, dict]
    steps: list[dict] = field(default_factory=list)  # pooling / subsampling applied, in order


@dataclass
class Selection:
    """A builder's answer: forget flags for the train and test rows, a rule description, manifest details."""

    train: list[bool]
    test: list[bool]
    rule: str
    details: dict = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (as stored, e.g. still gzipped)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_inputs(
    train: str | Path,
    test: str | Path,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    text_column: str | None = None,
    label_column: str | None = None,
) -> Inputs:
    """Read the raw labelled train and test files (any format `read_split` takes)."""
    splits = {
        role: read_split(path, role, label_words, text_column, label_column)
        for role, path in zip(ROLES, (train, test), strict=True)
    }
    sources = {
        role: {"path": str(path), "sha256": file_sha256(Path(path)), "rows": len(splits[role])}
        for role, path in zip(ROLES, (train, test), strict=True)
    }
    return Inputs(Rows.from_split(splits["train"], "train"), Rows.from_split(splits["test"], "test"), sources)


def check_sampling(test_fraction: float | None, max_rows: int | None) -> None:
    """A pool-resplit test fraction in (0, 1) and a positive row cap (None: not used); DataError else."""
    if test_fraction is not None and not 0.0 < test_fraction < 1.0:
        raise DataError(
            f"pool-resplit test fraction must be between 0 and 1 (exclusive), got {test_fraction}"
        )
    if max_rows is not None and max_rows < 1:
        raise DataError(f"max rows must be a positive integer, got {max_rows}")


def pool_resplit(inputs: Inputs, test_fraction: float, seed: int) -> Inputs:
    """Pool train and test, then draw a seeded random `test_fraction` of the pool as the new test set."""
    check_sampling(test_fraction, None)
    pool = Rows.concat([inputs.train, inputs.test])
    n_test = round(test_fraction * len(pool))
    if not 0 < n_test < len(pool):
        raise DataError(
            f"pool of {len(pool)} rows is too small to re-split with test fraction {test_fraction}"
        )
    order = np.random.default_rng([seed, 70]).permutation(len(pool))
    test_idx, train_idx = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    step = {"step": "pool_resplit", "test_fraction": test_fraction, "train": len(train_idx), "test": n_test}
    return Inputs(pool.subset(train_idx), pool.subset(test_idx), inputs.sources, [*inputs.steps, step])


def subsample(inputs: Inputs, max_rows: int, seed: int) -> Inputs:
    """Keep at most `max_rows` seeded-random rows of train and of test each (original order kept)."""
    check_sampling(None, max_rows)
    parts = []
    for stream, rows in enumerate((inputs.train, inputs.test)):
        if len(rows) <= max_rows:
            parts.append(rows)
        else:
            rng = np.random.default_rng([seed, 80 + stream])
            parts.append(rows.subset(sorted(rng.choice(len(rows), size=max_rows, replace=False).tolist())))
    step = {"step": "subsample", "max_rows": max_rows, "train": len(parts[0]), "test": len(parts[1])}
    return Inputs(parts[0], parts[1], inputs.sources, [*inputs.steps, step])


def partition(inputs: Inputs, selection: Selection) -> dict[str, Rows]:
    """The four splits from the forget flags; DataError when a split would be empty."""
    parts: dict[str, Rows] = {}
    for role, rows, flags in (
        ("train", inputs.train, selection.train),
        ("test", inputs.test, selection.test),
    ):
        if len(flags) != len(rows):
            raise ValueError(f"{len(flags)} forget flags for {len(rows)} {role} rows")
        forget = [i for i, f in enumerate(flags) if f]
        retain = [i for i, f in enumerate(flags) if not f]
        for kind, idx in (("forget", forget), ("retain", retain)):
            if not idx:
                what = "no" if kind == "forget" else "every"
                raise DataError(
                    f"forget rule {selection.rule} selects {what} row of the {len(rows)} {role} rows "
                    f"({_where(inputs, role)}): {role}_{kind} would be empty"
                )
        parts[f"{role}_retain"], parts[f"{role}_forget"] = rows.subset(retain), rows.subset(forget)
    return {name: parts[name] for name in SPLITS}


def _where(inputs: Inputs, role: str) -> str:
    """Where the train or test rows came from, for messages."""
    paths = " and ".join(inputs.sources[r]["path"] for r in ROLES)
    if any(step["step"] == "pool_resplit" for step in inputs.steps):
        return f"re-split from {paths} pooled"
    return inputs.sources[role]["path"]


def to_data(
    parts: dict[str, Rows],
    name: str,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    generic_words: Sequence[str] = DEFAULT_GENERIC_WORDS,
) -> UnlearningData:
    """The four splits as validated UnlearningData (a text in a forget and a retain split is an error)."""
    splits = {
        split: Split(split, rows.texts, rows.labels, f"{split}.csv", line_offset=None)
        for split, rows in parts.items()
    }
    data = UnlearningData(splits, tuple(label_words), tuple(generic_words), name=name)
    return data.validate(strict_overlap=True)


def split_csv(rows: Rows) -> str:
    """One split as CSV text: `text,label,origin,origin_id`, minimal quoting, `\\n` line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["text", "label", "origin", "origin_id"])
    writer.writerows(zip(rows.texts, rows.labels, rows.origin, rows.origin_id, strict=True))
    return buffer.getvalue()


def versions(*distributions: str) -> dict[str, str | None]:
    """Installed versions of spul, Python and the given distributions (None when absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("spul", "numpy", *distributions):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def label_counts(rows: Rows, n_labels: int) -> list[int]:
    """Number of rows per label."""
    return np.bincount(np.asarray(rows.labels, dtype=np.int64), minlength=n_labels).tolist()


def prepare(
    out: str | Path,
    inputs: Inputs,
    select: Callable[[Inputs], Selection],
    *,
    builder: str,
    options: dict,
    seed: int,
    pool_test_fraction: float | None = None,
    max_rows: int | None = None,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    packages: Sequence[str] = (),
    started: float | None = None,
) -> tuple[UnlearningData, dict]:
    """Pool/re-split and subsample `inputs`, run the builder, validate, write the folder and manifest.

    `started` (a `time.perf_counter()` value) dates `elapsed_s` in the manifest, e.g. before model loading.
    """
    started = time.perf_counter() if started is None else started
    if pool_test_fraction is not None:
        inputs = pool_resplit(inputs, pool_test_fraction, seed)
    if max_rows is not None:
        inputs = subsample(inputs, max_rows, seed)
    selection = select(inputs)
    parts = partition(inputs, selection)
    out = Path(out)
    data = to_data(parts, out.name, label_words)
    manifest = {
        "builder": builder,
        "rule": selection.rule,
        "options": options,
        "seed": seed,
        "sources": inputs.sources,
        "steps": inputs.steps,
        "sizes": data.sizes(),
        "labels": {name: label_counts(rows, len(label_words)) for name, rows in parts.items()},
        "label_words": list(label_words),
        **selection.details,
        "warnings": data.warnings,
        "fingerprint": data.fingerprint(),
        "versions": versions(*packages),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }

    def fill(folder: Path) -> None:
        """Write the four split files and the manifest into the fresh folder."""
        for name, rows in parts.items():
            write_text_atomic(folder / f"{name}.csv", split_csv(rows))
        write_json_atomic(folder / MANIFEST, manifest)

    write_folder_atomic(out, fill)
    return data, manifest
