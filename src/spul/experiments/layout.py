"""Where an experiment's files are: the output folder, one folder per cell, the result that marks it done.

OUT/config.json                 the validated config of the last run
OUT/cells/<id>/result.json      a finished cell (written last, atomically: its presence means done)
OUT/cells/<id>/artifact/        the run's trained artifact (kept unless keep_artifacts: false)
OUT/cells/<id>/embeddings.safetensors   last-layer states for figure1
OUT/cache/finetuned-<hash>/     the fine-tuned adapter per (model, training rows, fine-tune settings)
OUT/<artefact>.md|.csv|.json|.png and OUT/report.md
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spul.experiments.cells import Cell
from spul.experiments.config import ExperimentConfig

RESULT = "result.json"
EMBEDDINGS = "embeddings.safetensors"


@dataclass(frozen=True)
class Layout:
    """An experiment's config and output folder, and the paths of its cells."""

    config: ExperimentConfig
    out: Path

    def cell_dir(self, cell: Cell) -> Path:
        """The cell's folder."""
        return self.out / "cells" / cell.id

    def result(self, cell: Cell) -> dict[str, Any] | None:
        """The saved result of a finished cell, else None."""
        path = self.cell_dir(cell) / RESULT
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def needs_embeddings(self, cell: Cell) -> bool:
        """Figure 1 needs states of every run ('after') and of the model they start from ('before')."""
        if "figure1" not in self.config.artefacts:
            return False
        return cell.kind in ("train", self.before_kind)

    @property
    def before_kind(self) -> str:
        """The cell kind of the model unlearning starts from."""
        return "finetuned" if self.config.finetune is not None else "vanilla"

    def is_done(self, cell: Cell) -> bool:
        """Finished, with its embeddings where figure1 needs them."""
        folder = self.cell_dir(cell)
        if not (folder / RESULT).is_file():
            return False
        return not self.needs_embeddings(cell) or (folder / EMBEDDINGS).is_file()
