"""The paper's figures as PNG files (matplotlib, no display): the p sweep and the t-SNE of embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from spul.data.splits import SPLITS  # noqa: E402
from spul.experiments.tables import Table, format_value  # noqa: E402
from spul.io import write_file_atomic  # noqa: E402

PANELS_PER_ROW = 4
SPLIT_STYLE = {  # retain splits solid, forget splits dashed; train circles, test squares
    "train_retain": ("tab:blue", "-", "o"),
    "test_retain": ("tab:green", "-", "s"),
    "train_forget": ("tab:red", "--", "o"),
    "test_forget": ("tab:orange", "--", "s"),
}


def save_figure(fig, path: Path) -> None:
    """Write a PNG atomically and close the figure."""
    try:
        write_file_atomic(path, lambda tmp: fig.savefig(tmp, dpi=130, bbox_inches="tight"))
    finally:
        plt.close(fig)


def p_sweep_figure(table: Table, path: Path, methods: list[str] | None = None) -> None:
    """Figure 2: ACC and F1 of the four splits against the number of virtual tokens p (of `methods`);
    rows averaged over training seeds get error bars of their std."""
    groups: dict[str, list[dict]] = {}
    others = [k for k in table.keys if k != "p"]
    for row in table.rows:
        if "p" not in row["values"]:
            continue
        name = ", ".join(f"{k}={format_value(k, row['values'].get(k))}" for k in others)
        groups.setdefault(name, []).append(row)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for (name, rows), alpha in zip(groups.items(), np.linspace(1.0, 0.45, max(len(groups), 1)), strict=False):
        rows = sorted(rows, key=lambda r: r["values"]["p"])
        xs = [r["values"]["p"] for r in rows]
        for ax, metric in zip(axes, ("acc", "f1"), strict=True):
            for split in SPLITS:
                color, line, marker = SPLIT_STYLE[split]
                ys = [r["metrics"][split][metric] for r in rows]
                stds = [r["metrics"][split].get(f"{metric}_std") for r in rows]
                bars = stds if all(v is not None for v in stds) else None
                label = split.replace("_", " ") + (f" ({name})" if name else "")
                ax.errorbar(
                    xs, ys, bars, fmt=line, marker=marker, color=color, alpha=alpha, label=label, capsize=3
                )
    for ax, metric in zip(axes, ("ACC (%)", "weighted F1 (%)"), strict=True):
        ax.set_xlabel("number of virtual tokens p")
        ax.set_ylabel(metric)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Figure 2: effect of the prompt length p" + (f" ({', '.join(methods)})" if methods else ""))
    save_figure(fig, path)


@dataclass
class Panel:
    """One t-SNE panel: a title and the embedded points."""

    title: str
    hidden: np.ndarray  # [N, H]
    labels: np.ndarray  # [N]
    is_forget: np.ndarray  # [N] bool


def tsne_2d(hidden: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """Seeded 2-d t-SNE (perplexity lowered where there are few points)."""
    n = len(hidden)
    if n < 3:
        return np.zeros((n, 2)) if n else np.zeros((0, 2))
    perplexity = min(perplexity, max(1.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(hidden.astype(np.float64))


def tsne_figure(
    panels: Sequence[Panel],
    label_words: Sequence[str],
    path: Path,
    *,
    perplexity: float,
    seed: int,
    title: str,
) -> None:
    """Figure 1: one t-SNE panel per model state; colour = retain/forget, marker = label."""
    markers = ["x", "o", "^", "s", "D", "v"]
    colors = {False: "tab:blue", True: "tab:red"}
    columns = min(PANELS_PER_ROW, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        xy = tsne_2d(panel.hidden, perplexity, seed)
        for forget in (False, True):
            for label, word in enumerate(label_words):
                chosen = (panel.is_forget == forget) & (panel.labels == label)
                if chosen.any():
                    ax.scatter(
                        xy[chosen, 0],
                        xy[chosen, 1],
                        s=10,
                        c=colors[forget],
                        marker=markers[label % len(markers)],
                        alpha=0.6,
                        linewidths=0.8,
                        label=f"{'forget' if forget else 'retain'} / {word}",
                    )
        ax.set_title(panel.title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    save_figure(fig, path)
