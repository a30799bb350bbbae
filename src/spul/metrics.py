"""Accuracy and weighted F1 per split, as the paper reports them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import f1_score

from spul.data.splits import SPLITS


def split_metrics(
    labels: Sequence[int],
    predicted: Sequence[int],
    num_labels: int,
    logprobs: np.ndarray | None = None,
) -> dict[str, float]:
    """ACC and weighted F1 (percent); an answer that is no task label (e.g. `neutral`) is simply wrong.

    F1 is sklearn's support-weighted F1 over the task labels: a non-task answer lowers recall of the
    true class but is no class of its own (it has no support), as in the paper's evaluation.
    With the label words' log-probabilities (`logprobs`, [N, K]) it adds what those give away even
    when the answer is generic: `label_acc`, the accuracy of the argmax over the label words alone (a tie
    between k label words counts 1/k: a fair coin), and `margin_auc`, the ROC AUC of the label margin
    log p(label 1) - log p(label 0) against the true label (K > 2: one-vs-rest macro AUC of the
    label-word probabilities; None when one class is missing).
    """
    y_true = np.asarray(labels)
    y_pred = np.asarray(predicted)
    task_labels = list(range(num_labels))
    f1 = f1_score(y_true, y_pred, labels=task_labels, average="weighted", zero_division=0)
    metrics = {
        "acc": 100.0 * float(np.mean(y_true == y_pred)),
        "f1": 100.0 * float(f1),
        "other": 100.0 * float(np.mean(~np.isin(y_pred, task_labels))),
        "n": int(len(y_true)),
    }
    if logprobs is not None:
        metrics |= label_only_metrics(y_true, np.asarray(logprobs, dtype=np.float64))
    return metrics


def label_only_metrics(y_true: np.ndarray, logprobs: np.ndarray) -> dict[str, float | None]:
    """Label-only ACC (percent) and label-margin ROC AUC of [N, K] label-word log-probabilities."""
    from sklearn.metrics import roc_auc_score

    label_acc = 0.0
    if len(y_true):  # tied maxima (e.g. uniform label probabilities) count as a fair coin: 1 / ties
        at_top = logprobs == logprobs.max(1, keepdims=True)
        label_acc = 100.0 * float(np.mean(at_top[np.arange(len(y_true)), y_true] / at_top.sum(1)))
    auc = None
    if len(np.unique(y_true)) == logprobs.shape[1] >= 2:
        if logprobs.shape[1] == 2:
            auc = float(roc_auc_score(y_true, logprobs[:, 1] - logprobs[:, 0]))
        else:
            probs = np.exp(logprobs - logprobs.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            auc = float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
    return {"label_acc": label_acc, "margin_auc": auc}


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """A markdown table in the paper's layout: one row per model, ACC / F1 per split.

    When the rows carry label-only metrics, a second table gives label-only ACC / label-margin AUC: what
    the label probabilities still tell about each split (on forget splits, what unlearning left).
    """
    header = "| model | " + " | ".join(s.replace("_", " ") for s in SPLITS) + " |"
    rule = "|---" * (len(SPLITS) + 1) + "|"
    lines = [header, rule]
    for name, table in rows.items():
        cells = [f"{table[s]['acc']:.2f} / {table[s]['f1']:.2f}" if s in table else "-" for s in SPLITS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    labelled = {n: t for n, t in rows.items() if any("label_acc" in m for m in t.values())}
    if labelled:
        lines += [
            "",
            "Label-only ACC / label-margin AUC (argmax over the label words alone):",
            "",
            header,
            rule,
        ]
        for name, table in labelled.items():
            cells = [label_cell(table.get(s)) for s in SPLITS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_std(metrics: dict[str, float], key: str, digits: int = 2) -> str:
    """A metric, with its std over seeds where the row is a mean (`81.50 ± 2.10`)."""
    text = f"{metrics[key]:.{digits}f}"
    std = metrics.get(f"{key}_std")
    return text if std is None else f"{text} ± {std:.{digits}f}"


def label_cell(metrics: dict[str, float] | None) -> str:
    """`label-only ACC / margin AUC` of one split's metrics (± std where a mean over seeds), or `-`."""
    if not metrics or "label_acc" not in metrics:
        return "-"
    auc = "-" if metrics.get("margin_auc") is None else with_std(metrics, "margin_auc", 3)
    return f"{with_std(metrics, 'label_acc')} / {auc}"


def selection_score(table: dict[str, dict[str, float]]) -> float:
    """Model selection: mean ACC over the evaluated retain splits minus mean ACC over the forget splits."""
    retain = [m["acc"] for s, m in table.items() if "retain" in s]
    forget = [m["acc"] for s, m in table.items() if "forget" in s]
    return (sum(retain) / len(retain) if retain else 0.0) - (sum(forget) / len(forget) if forget else 0.0)
