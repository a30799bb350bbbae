"""A run's `select`: one point of its sweep (e.g. its learning rate) stands for it in Tables 1 and 4.

The rule looks at the train splits only (rows the model was trained on, which whoever unlearns has):
among the points whose train-retain ACC stays within `retain_within` points of the model unlearning
starts from, the one that forgets most (lowest train-forget ACC); when no point qualifies, the one that
keeps the most train-retain ACC. The test splits play no part, so the tables' test columns stay honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spul.experiments.cells import Cell

Entry = tuple[Cell, dict[str, Any]]


@dataclass
class Search:
    """One selecting run on one model and dataset: every point tried and the one chosen."""

    points: list[Entry]
    chosen: Entry
    reference_acc: float  # train-retain ACC of the model unlearning starts from
    within: float

    def kept(self, entry: Entry) -> bool:
        """Whether this point kept train-retain ACC within the bound."""
        return train_acc(entry, "train_retain") >= self.reference_acc - self.within

    @property
    def qualified(self) -> bool:
        """Whether the chosen point kept retain within the bound (else it is the best of the failures)."""
        return self.kept(self.chosen)


def train_acc(entry: Entry, split: str) -> float:
    """ACC of a finished cell on one split."""
    return float(entry[1]["metrics"][split]["acc"])


def _group(cell: Cell) -> tuple[str, str, int]:
    return (cell.model.spec, cell.dataset.label, id(cell.run))


def _reference(entries: list[Entry], cell: Cell) -> Entry:
    kind = "finetuned" if any(c.kind == "finetuned" for c, _ in entries) else "vanilla"
    for entry in entries:
        other = entry[0]
        if other.kind == kind and other.model.spec == cell.model.spec and other.dataset == cell.dataset:
            return entry
    raise LookupError(f"no {kind} row for {cell.describe()}; `select` compares with it")


def choose(points: list[Entry], reference_acc: float, within: float) -> Search:
    """The point that forgets most among those within the bound, else the one keeping most retain."""
    search = Search(points, points[0], reference_acc, within)
    kept = [p for p in points if search.kept(p)]
    if kept:
        search.chosen = min(kept, key=lambda p: (train_acc(p, "train_forget"), -train_acc(p, "train_retain")))
    else:
        search.chosen = max(points, key=lambda p: train_acc(p, "train_retain"))
    return search


def select_runs(entries: list[Entry]) -> tuple[list[Entry], list[Search]]:
    """The entries with each selecting run's sweep replaced by its chosen point, and the searches."""
    groups: dict[tuple[str, str, int], list[Entry]] = {}
    for entry in entries:
        cell = entry[0]
        if cell.kind == "train" and cell.run.select is not None:
            groups.setdefault(_group(cell), []).append(entry)
    searches = {}
    for key, points in groups.items():
        cell = points[0][0]
        reference = train_acc(_reference(entries, cell), "train_retain")
        searches[key] = choose(points, reference, cell.run.select.retain_within)
    kept = []
    for entry in entries:
        cell = entry[0]
        key = _group(cell) if cell.kind == "train" else None
        if key in searches and entry is not searches[key].chosen:
            continue
        kept.append(entry)
    return kept, list(searches.values())
