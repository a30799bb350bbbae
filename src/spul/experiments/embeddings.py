"""Last-layer hidden states at the answer position, for the t-SNE figure (before / after unlearning)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from spul.data.splits import UnlearningData
from spul.engine import prompted_forward
from spul.models import LoadedModel
from spul.prompting import Encoder, Template, length_sorted_batches


@dataclass
class Points:
    """Training rows to embed: texts, labels and whether each row is forget data."""

    texts: list[str]
    labels: np.ndarray  # [N] int64
    is_forget: np.ndarray  # [N] bool


def select_points(data: UnlearningData, per_label: int, seed: int) -> Points:
    """Up to `per_label` rows of each label from train_retain and from train_forget (seeded, stable)."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    labels: list[int] = []
    flags: list[bool] = []
    for forget, split in ((False, data.train_retain), (True, data.train_forget)):
        for label in range(data.num_labels):
            rows = [i for i, y in enumerate(split.labels) if y == label]
            if len(rows) > per_label:
                rows = sorted(rng.choice(rows, size=per_label, replace=False).tolist())
            texts += [split.texts[i] for i in rows]
            labels += [label] * len(rows)
            flags += [forget] * len(rows)
    return Points(texts, np.asarray(labels, dtype=np.int64), np.asarray(flags, dtype=bool))


@torch.no_grad()
def last_hidden_states(
    lm: LoadedModel,
    texts: list[str],
    *,
    template: Template | None = None,
    encoder: Encoder | None = None,
    prefix: torch.Tensor | None = None,
    batch_size: int = 32,
    max_length: int = 512,
) -> np.ndarray:
    """[N, hidden] final-layer states at the last prompt position (where the label word is predicted).

    `prefix` ([p, hidden] soft-prompt embeddings) is applied by the engine's `prompted_forward`, as at
    prediction. `encoder` replaces the
    template encoding (in-context artifacts put demonstrations before each text).
    """
    encoder = encoder or Encoder(lm.tokenizer, template or Template(), max_length)
    prompts = encoder.encode(texts)
    out = np.zeros((len(texts), lm.model.config.hidden_size), dtype=np.float32)
    for index in length_sorted_batches([len(p) for p in prompts], batch_size):
        batch = encoder.batch([prompts[i] for i in index], [(0,)] * len(index), index).to(lm.device)
        with lm.autocast():
            result = prompted_forward(lm.model, batch, prefix, output_hidden_states=True)
        out[index] = result.hidden_states[-1][:, -1].float().cpu().numpy()
    return out


def save_embeddings(path: Path, hidden: np.ndarray, points: Points) -> None:
    """Write states, labels and forget flags as one safetensors file (atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tensors = {
        "hidden": np.ascontiguousarray(hidden, dtype=np.float32),
        "labels": points.labels.astype(np.int64),
        "is_forget": points.is_forget.astype(np.int8),
    }
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_embeddings(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hidden [N, H], labels [N], is_forget [N] bool) saved by `save_embeddings`."""
    tensors = load_file(str(path))
    return tensors["hidden"], tensors["labels"], tensors["is_forget"].astype(bool)
