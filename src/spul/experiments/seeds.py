"""A run with `seeds`: its cells (one per training seed) become one table row of mean +- std."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from spul.experiments.cells import Cell

Entry = tuple[Cell, dict[str, Any]]
AVERAGED = ("acc", "f1", "other", "label_acc", "margin_auc")  # per split; `n` is the same for every seed


def _group(cell: Cell) -> tuple[Any, ...]:
    """What a seeded cell shares with its other seeds."""
    return (cell.model.spec, cell.dataset.label, id(cell.run), repr(sorted(cell.sweep.items())))


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _merged_metrics(results: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for split, first in results[0]["metrics"].items():
        if not isinstance(first, dict):
            continue
        out = dict(first)
        for key in AVERAGED:
            values = [r["metrics"][split].get(key) for r in results]
            if all(isinstance(v, (int, float)) for v in values):
                out[key], out[f"{key}_std"] = mean_std([float(v) for v in values])
        merged[split] = out
    return merged


def _merged_efficiency(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    efficiencies = [r.get("efficiency") for r in results]
    if not all(efficiencies):
        return None
    out = dict(efficiencies[0])
    for key in ("seconds_per_epoch", "peak_memory_mib", "memory_growth_mib"):
        values = [e.get(key) for e in efficiencies]
        if all(isinstance(v, (int, float)) for v in values):
            out[key] = statistics.fmean(values)
    return out


def merge_seeds(entries: list[Entry]) -> list[Entry]:
    """The entries with each seeded run's cells (per sweep point) merged into one: metrics are the mean
    over the finished seeds with `<metric>_std` beside them, and `seeds` lists which seeds it holds."""
    groups: dict[tuple[Any, ...], list[Entry]] = {}
    for entry in entries:
        if entry[0].seed is not None:
            groups.setdefault(_group(entry[0]), []).append(entry)
    merged = []
    for entry in entries:
        cell = entry[0]
        if cell.seed is None:
            merged.append(entry)
            continue
        members = groups[_group(cell)]
        if entry is not members[0]:  # the group's row stands where its first seed stood
            continue
        results = [result for _, result in members]
        result = dict(results[0]) | {
            "metrics": _merged_metrics(results),
            "seeds": [c.seed for c, _ in members],
            "efficiency": _merged_efficiency(results),
        }
        merged.append((dataclasses.replace(cell, seed=None), result))
    return merged


def seed_notes(entries: list[Entry]) -> list[str]:
    """One line per seeded run saying over which seeds its rows are averaged."""
    notes = []
    for cell, result in entries:
        seeds = result.get("seeds")
        if seeds:
            listed = ", ".join(str(s) for s in seeds)
            notes.append(
                f"{cell.label}: mean ± std over {len(seeds)} training seed(s) ({listed}); same rows and "
                "fine-tuned model."
            )
    return list(dict.fromkeys(notes))
