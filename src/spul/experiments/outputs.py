"""Write an experiment's artefacts (tables, figures, report.md) from its finished cells."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from spul.experiments.cells import Cell
from spul.experiments.embeddings import load_embeddings
from spul.experiments.figures import Panel, p_sweep_figure, tsne_figure
from spul.experiments.layout import EMBEDDINGS, Layout
from spul.experiments.seeds import merge_seeds
from spul.experiments.tables import Table, build_table, efficiency_table, search_table
from spul.io import write_json_atomic, write_text_atomic

Entries = list[tuple[Cell, dict[str, Any]]]


def slug(text: str) -> str:
    """A file-name-safe version of a label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower() or "x"


def write_table(out: Path, table: Table) -> list[Path]:
    """`<name>.md`, `<name>.csv` and `<name>.json`."""
    paths = [out / f"{table.name}.{ext}" for ext in ("md", "csv", "json")]
    write_text_atomic(paths[0], table.markdown())
    write_text_atomic(paths[1], table.csv())
    write_json_atomic(paths[2], table.json())
    return paths


def fine_tune_stages(entries: Entries) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Efficiency rows of the fine-tuning stage, read beside each cached adapter the cells used."""
    stages, seen = [], set()
    for cell, result in entries:
        adapter = result.get("adapter")
        if not adapter or adapter in seen:
            continue
        seen.add(adapter)
        path = Path(adapter) / "efficiency.json"
        if path.is_file():
            values = {"method": "Fine-tuning (LoRA)", "data": cell.dataset.label, "model": cell.model.name}
            stages.append((values, json.loads(path.read_text(encoding="utf-8"))))
    return stages


def figure1(layout: Layout, entries: Entries) -> list[Path]:
    """One t-SNE figure per (model, dataset): the model before unlearning, then each run after it."""
    before_kind = layout.before_kind
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell, _ in entries:
        groups.setdefault((cell.model.name, cell.dataset.label), []).append(cell)
    figure = layout.config.figure1
    paths = []
    for (model, data), cells in groups.items():
        panels = []
        for cell in cells:
            if cell.kind not in (before_kind, "train"):
                continue
            hidden, labels, is_forget = load_embeddings(layout.cell_dir(cell) / EMBEDDINGS)
            if cell.kind == "train":
                point = ", ".join(f"{k}={v}" for k, v in cell.sweep.items())
                title = f"after unlearning: {cell.label}" + (f" ({point})" if point else "")
            else:
                title = f"before unlearning ({cell.label})"
            panels.append(Panel(title, hidden, labels, is_forget))
        name = "figure1.png" if len(groups) == 1 else f"figure1-{slug(data)}-{slug(model)}.png"
        path = layout.out / name
        tsne_figure(
            panels,
            cells[0].dataset.label_words,
            path,
            perplexity=figure.perplexity,
            seed=figure.seed,
            title=f"Figure 1: t-SNE of last-layer states at the answer position ({model}, {data})",
        )
        paths.append(path)
    return paths


def write_outputs(layout: Layout, entries: Entries) -> list[Path]:
    """Every artefact the config asks for, then report.md gathering them."""
    out, config = layout.out, layout.config
    entries = merge_seeds(entries)  # a run's seeds become one row of mean +- std
    written: list[Path] = []
    sections = [f"# {config.name}", "", config.description.strip(), ""]
    for name in config.artefacts:
        if name in ("table1", "table2", "table3", "table4", "figure2"):
            table = build_table(name, entries)
            written += write_table(out, table)
            sections += [table.markdown(), ""]
            search = search_table(entries) if name in ("table1", "table4") else None
            if search is not None and (out / "search.md") not in written:
                written += write_table(out, search)
                sections += [search.markdown(), ""]
            if name == "figure2":
                path = out / "figure2.png"
                methods = dict.fromkeys(c.label for c, _ in entries if "p" in c.sweep)
                p_sweep_figure(table, path, list(methods))
                written.append(path)
                sections += [f"![Figure 2]({path.name})", ""]
        elif name == "efficiency":
            table = efficiency_table(entries, fine_tune_stages(entries))
            written += write_table(out, table)
            sections += [table.markdown(), ""]
        elif name == "figure1":
            paths = figure1(layout, entries)
            written += paths
            sections += [f"![Figure 1]({p.name})" for p in paths] + [""]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(sections).rstrip() + "\n")
    return [*written, report]
