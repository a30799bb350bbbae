"""Accuracy and weighted F1 per split, as the paper reports them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score

from spul.data.splits import SPLITS


def split_metrics(labels: Sequence[int], predicted: Sequence[int], num_labels: int) -> dict[str, float]:
    """ACC and weighted F1 (percent); an answer that is no task label (e.g. `neutral`) is simply wrong.

    F1 is sklearn's support-weighted F1 over the task labels: a non-task answer lowers recall of the
    true class but is no class of its own (it has no support), as in the paper's evaluation.
    """
    y_true = np.asarray(labels)
    y_pred = np.asarray(predicted)
    task_labels = list(range(num_labels))
    f1 = f1_score(y_true, y_pred, labels=task_labels, average="weighted", zero_division=0)
    return {
        "acc": 100.0 * float(np.mean(y_true == y_pred)),
        "f1": 100.0 * float(f1),
        "other": 100.0 * float(np.mean(~np.isin(y_pred, task_labels))),
        "n": int(len(y_true)),
    }


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """A markdown table in the paper's layout: one row per model, ACC / F1 per split."""
    header = "| model | " + " | ".join(s.replace("_", " ") for s in SPLITS) + " |"
    lines = [header, "|---" * (len(SPLITS) + 1) + "|"]
    for name, table in rows.items():
        cells = [f"{table[s]['acc']:.2f} / {table[s]['f1']:.2f}" if s in table else "-" for s in SPLITS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_score(table: dict[str, dict[str, float]]) -> float:
    """Model selection: mean ACC over the evaluated retain splits minus mean ACC over the forget splits."""
    retain = [m["acc"] for s, m in table.items() if "retain" in s]
    forget = [m["acc"] for s, m in table.items() if "forget" in s]
    return (sum(retain) / len(retain) if retain else 0.0) - (sum(forget) / len(forget) if forget else 0.0)
