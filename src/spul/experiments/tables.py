"""The paper's tables from finished cells: markdown in the paper's layout, plus CSV and JSON."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from spul.data.splits import SPLITS
from spul.experiments.cells import Cell
from spul.experiments.seeds import seed_notes
from spul.experiments.selection import Search, select_runs
from spul.metrics import label_cell, with_std

# Columns a table may show besides its leading ones (only where their value differs between rows).
# Sweep tables may show any setting; method tables (1, 4, efficiency) only what tells their rows apart
# beyond the method itself, since methods differ in lr, epochs and options by design.
CANDIDATE_KEYS = ("data", "model", "method", "tau", "p", "alpha", "beta", "lr", "epochs")
ROW_KEYS = ("data", "model", "method")
METRIC_KEYS = ("acc", "f1", "other", "n", "label_acc", "margin_auc")  # per split, in CSV and JSON
HEADERS = {
    "trainable_parameters": "trainable parameters (share)",
    "model_parameters": "model parameters",
    "seconds_per_epoch": "seconds / epoch",
    "peak_memory_mib": "peak memory (MiB)",
    "memory_growth_mib": "added during training (MiB)",
    "memory": "memory measured",
    "retain_drop": "retain drop",
}


def cell_values(cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    """The settings a table row can show for a cell: data, model, method, tau, p, alpha, beta, ..."""
    values: dict[str, Any] = {"data": cell.dataset.label, "model": cell.model.name, "method": cell.label}
    if cell.kind != "train":
        return values
    hyper = result.get("hyperparameters") or {}
    method, training = hyper.get("method") or {}, hyper.get("training") or {}
    values["tau"] = cell.tau
    if "num_virtual_tokens" in method:
        values["p"] = method["num_virtual_tokens"]
    for key in ("alpha", "beta"):
        if key in method:
            values[key] = method[key]
    if training.get("epochs"):  # a method that trains nothing (ICUL) has no lr to show
        values["lr"] = training.get("lr")
        values["epochs"] = training.get("epochs")
    for key, value in cell.sweep.items():
        values.setdefault(key, value)
    return {k: v for k, v in values.items() if v is not None}


def format_value(key: str, value: Any) -> str:
    """A setting as a table shows it (tau as a percentage of the forget set)."""
    if value is None:
        return "-"
    if key == "tau":
        return f"{100 * float(value):g}%"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def varying_keys(rows: list[dict[str, Any]], candidates: list[str]) -> list[str]:
    """The candidate keys whose (present) values differ between rows."""
    keys = []
    for key in candidates:
        seen = {repr(r["values"][key]) for r in rows if key in r["values"]}
        if len(seen) > 1:
            keys.append(key)
    return keys


@dataclass
class Table:
    """A titled table: key columns, then ACC / F1 per split (or other metric columns)."""

    name: str
    title: str
    keys: list[str]
    rows: list[dict[str, Any]]  # each {"values": {...}, "metrics": {split: {acc, f1, other, n}}}
    metric_columns: list[str] = field(default_factory=lambda: list(SPLITS))
    formatters: dict[str, Any] = field(default_factory=dict)  # metric column -> fn(row) -> str (markdown)
    notes: list[str] = field(default_factory=list)  # lines printed under the markdown table

    def markdown(self) -> str:
        """The table in the paper's layout: one row per model/method, `ACC / F1` per split."""
        heads = [HEADERS.get(c, c.replace("_", " ")) for c in [*self.keys, *self.metric_columns]]
        lines = [f"**{self.title}**", "", "| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
        for row in self.rows:
            cells = [format_value(k, row["values"].get(k)) for k in self.keys]
            cells += [self._metric_cell(row, c) for c in self.metric_columns]
            lines.append("| " + " | ".join(cells) + " |")
        lines += self._label_only(heads)
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"

    def _label_only(self, heads: list[str]) -> list[str]:
        """A second table: label-only ACC / label-margin AUC per split, for rows that have them."""
        rows = [
            r
            for r in self.rows
            if any(isinstance(m, dict) and "label_acc" in m for m in r["metrics"].values())
        ]
        if not rows or self.formatters:
            return []
        lines = [
            "",
            "Label-only ACC (%) / label-margin AUC per split: what the label probabilities give away.",
            "",
        ]
        lines += ["| " + " | ".join(heads) + " |", "|---" * len(heads) + "|"]
        for row in rows:
            cells = [format_value(k, row["values"].get(k)) for k in self.keys]
            cells += [label_cell(row["metrics"].get(column)) for column in self.metric_columns]
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    def _metric_cell(self, row: dict[str, Any], column: str) -> str:
        if column in self.formatters:
            return self.formatters[column](row)
        metric = row["metrics"].get(column)
        return "-" if metric is None else f"{with_std(metric, 'acc')} / {with_std(metric, 'f1')}"

    def records(self) -> list[dict[str, Any]]:
        """Flat rows (settings, then `<split>_acc`, `<split>_f1`, ...) for CSV and JSON."""
        flat = []
        for row in self.rows:
            record = {k: row["values"].get(k) for k in self.keys}
            for column in self.metric_columns:
                value = row["metrics"].get(column)
                if isinstance(value, dict):
                    keys = [k for m in METRIC_KEYS for k in (m, f"{m}_std")]
                    record |= {f"{column}_{k}": value[k] for k in keys if k in value}
                else:
                    record[column] = value
            flat.append(record)
        return flat

    def csv(self) -> str:
        """The flat rows as CSV text."""
        records = self.records()
        columns = list(dict.fromkeys(k for r in records for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()

    def json(self) -> dict[str, Any]:
        """Title, columns and flat rows."""
        return {"name": self.name, "title": self.title, "keys": self.keys, "rows": self.records()}


# name -> (title, leading columns, which cells); the rest of the layout follows the paper's Table 1.
ALL = ("vanilla", "finetuned", "train")
TABLES = {
    "table1": ("Table 1: unlearning, ACC / F1 (%) per split", ["data", "method"], ALL),
    "table2": ("Table 2: retain weight alpha x KL weight beta, ACC / F1 (%)", ["alpha", "beta"], ("train",)),
    "table3": ("Table 3: forget-set size tau (share of the forget set), ACC / F1 (%)", ["tau"], ("train",)),
    "table4": ("Table 4: base models, ACC / F1 (%)", ["model", "method"], ALL),
    "figure2": ("Figure 2 data: number of virtual tokens p, ACC / F1 (%)", ["p"], ("train",)),
}


def build_table(name: str, entries: list[tuple[Cell, dict[str, Any]]]) -> Table:
    """One of TABLES from (cell, result) pairs, in the config's order.

    A sweep table (alpha x beta, tau, p) shows the runs that sweep its keys when there are any, else every
    run that has them; rows lacking a leading key (e.g. no alpha for a LoRA run) are left out.
    """
    title, leading, kinds = TABLES[name]
    notes, searches = [], []
    if kinds == ALL:  # a method table: a selecting run shows its chosen sweep point only
        entries, searches = select_runs(entries)
        notes = selection_notes(searches)
    notes += seed_notes([(c, r) for c, r in entries if c.kind in kinds])
    chosen = [(cell, result) for cell, result in entries if cell.kind in kinds]
    swept = [(cell, result) for cell, result in chosen if set(cell.sweep) & set(leading)]
    if kinds == ("train",) and swept:
        chosen = swept
    rows = [{"values": cell_values(cell, result), "metrics": result["metrics"]} for cell, result in chosen]
    rows = [row for row in rows if all(key in row["values"] for key in leading)]
    sweep_keys = [k for cell, _ in entries for k in cell.sweep]
    base = CANDIDATE_KEYS if kinds == ("train",) else ROW_KEYS
    candidates = [k for k in dict.fromkeys([*base, *sweep_keys]) if k not in leading]
    keys = leading + varying_keys(rows, candidates)
    keys += [k for k in dict.fromkeys(k for s in searches for k in s.chosen[0].sweep) if k not in keys]
    return Table(name, title, keys, rows, notes=notes)


def selection_notes(searches: list[Search]) -> list[str]:
    """How the shown points were chosen, and which runs found no point within the bound."""
    if not searches:
        return []
    within = sorted({s.within for s in searches})
    bound = " / ".join(f"{w:g}" for w in within)
    notes = [
        f"Swept runs show one point (see search.md): the lowest train-forget ACC among the points keeping "
        f"train-retain ACC within {bound} points of the model they start from; test splits are not used."
    ]
    for search in searches:
        if not search.qualified:
            cell = search.chosen[0]
            notes.append(
                f"{cell.label} ({cell.model.name}, {cell.dataset.label}): no point kept train retain "
                f"within {search.within:g} points of {search.reference_acc:.2f}; the one keeping most "
                "retain is shown."
            )
    return notes


def search_table(entries: list[tuple[Cell, dict[str, Any]]]) -> Table | None:
    """Every point of each selecting run, with whether it kept retain and which one the tables show."""
    _, searches = select_runs(entries)
    if not searches:
        return None
    rows = []
    for search in searches:
        for entry in search.points:
            cell, result = entry
            drop = search.reference_acc - float(result["metrics"]["train_retain"]["acc"])
            status = "chosen" if entry is search.chosen else "kept" if search.kept(entry) else "-"
            metrics = result["metrics"] | {"retain_drop": round(drop, 2), "status": status}
            rows.append({"values": cell_values(cell, result), "metrics": metrics})
    sweep_keys = [k for search in searches for cell, _ in search.points for k in cell.sweep]
    keys = varying_keys(rows, ["data", "model"]) + ["method", *dict.fromkeys(sweep_keys)]
    columns = [*SPLITS, "retain_drop", "status"]
    formatters = {
        "retain_drop": lambda r: f"{r['metrics']['retain_drop']:+.2f}",
        "status": lambda r: r["metrics"]["status"],
    }
    title = (
        "Search: every swept point of the selecting runs, ACC / F1 (%); retain drop = points of "
        "train-retain ACC lost against the model unlearning starts from; kept = within the bound; "
        "chosen = the point the method tables show"
    )
    return Table("search", title, keys, rows, columns, formatters)


def efficiency_table(
    entries: list[tuple[Cell, dict[str, Any]]], stages: list[tuple[dict[str, Any], dict[str, Any]]]
) -> Table:
    """Trainable parameters, seconds per epoch and peak memory of each training run (and fine-tune)."""
    rows = [{"values": values, "metrics": efficiency} for values, efficiency in stages]
    rows += [
        {"values": cell_values(cell, result), "metrics": result["efficiency"]}
        for cell, result in entries
        if cell.kind == "train" and result.get("efficiency")
    ]
    sweep_keys = [k for cell, _ in entries for k in cell.sweep]
    candidates = [k for k in dict.fromkeys([*ROW_KEYS, *sweep_keys]) if k != "method"]
    columns = [
        "trainable_parameters",
        "model_parameters",
        "seconds_per_epoch",
        "epochs",
        "peak_memory_mib",
        "memory_growth_mib",
        "memory",
        "device",
        "precision",
    ]

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    def share(row: dict[str, Any]) -> str:
        trainable, total = row["metrics"]["trainable_parameters"], row["metrics"]["model_parameters"]
        return f"{trainable:,} ({100 * trainable / total:.3g}%)"

    formatters = {
        "trainable_parameters": share,
        "model_parameters": lambda r: f"{r['metrics']['model_parameters']:,}",
        "seconds_per_epoch": lambda r: f"{r['metrics']['seconds_per_epoch']:.1f}",
        "epochs": lambda r: str(r["metrics"]["epochs"]),
        "peak_memory_mib": lambda r: mib(r["metrics"]["peak_memory_mib"]),
        "memory_growth_mib": lambda r: mib(r["metrics"].get("memory_growth_mib")),
        "memory": lambda r: str(r["metrics"]["memory"]),
        "device": lambda r: str(r["metrics"]["device"]),
        "precision": lambda r: str(r["metrics"].get("precision", "-")),  # not recorded before 2026-12-05
    }
    title = (
        "Efficiency: trainable parameters, training time per epoch, peak memory (MiB; on the CPU the "
        "process's resident memory, loaded model included)"
    )
    return Table("efficiency", title, ["method", *varying_keys(rows, candidates)], rows, columns, formatters)
