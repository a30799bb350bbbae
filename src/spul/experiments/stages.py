"""The work of one experiment cell: its rows, the fine-tuned model it starts from (trained once, cached),
a training run or an evaluation, and the last-layer states figure1 needs."""

from __future__ import annotations

import gc
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spul.artifacts import MANIFEST, read_manifest
from spul.data import load_data
from spul.data.selection import Selection
from spul.data.splits import UnlearningData
from spul.evaluation import evaluate
from spul.experiments.cells import Cell, data_settings, settings_hash, stage_settings
from spul.experiments.config import DatasetEntry, ModelEntry, train_config
from spul.experiments.embeddings import last_hidden_states, save_embeddings, select_points
from spul.experiments.layout import EMBEDDINGS, Layout
from spul.experiments.measure import PeakMemory
from spul.io import write_json_atomic
from spul.methods import get_method
from spul.methods.guard import with_forget_rule
from spul.models import LoadedModel, load_model
from spul.pipeline import load_unlearned, train_artifact
from spul.prompting import Encoder, Template


@dataclass
class Prepared:
    """The rows a cell trains on and the rows it is scored on."""

    training: UnlearningData
    evaluation: UnlearningData


def selection(dataset: DatasetEntry, tau: float) -> Selection:
    """How a dataset entry's rows are drawn (the same draw as `spul unlearn`, so prompts evaluate alike)."""
    return Selection(
        dataset.data,
        limit=dataset.limit,
        tau=tau,
        seed=dataset.seed,
        max_chars=dataset.max_chars,
        eval_limit=dataset.eval_limit,
    )


class Stages:
    """The stage bodies of an experiment's cells, with the data and fine-tuned models they share."""

    def __init__(
        self,
        layout: Layout,
        cache_dir: Path,
        device: str | None,
        show_progress: bool,
        log: Callable[[str], None],
    ):
        self.layout, self.config = layout, layout.config
        self.cache_dir, self.device = cache_dir, device
        self.show_progress, self.log = show_progress, log
        self.template = Template(self.config.template) if self.config.template is not None else Template()
        self._full: dict[str, UnlearningData] = {}
        self._prepared: dict[tuple[str, float], Prepared] = {}
        self._finetuned: dict[tuple[str, str], Path] = {}

    # ---- data and the fine-tuned model ------------------------------------------------------------
    def full(self, dataset: DatasetEntry) -> UnlearningData:
        """The whole dataset, loaded once."""
        key = settings_hash(data_settings(dataset))
        if key not in self._full:
            rule = dataset.forget_rule.build() if dataset.forget_rule is not None else None
            full = load_data(
                dataset.data,
                data_dir=dataset.data_dir,
                label_words=dataset.label_words,
                generic_words=dataset.generic_words,
                forget_rule=rule,
                seed=dataset.seed,
            )
            for warning in full.warnings:
                self.log(f"warning: {dataset.label}: {warning}")
            self._full[key] = full
        return self._full[key]

    def rows(self, cell: Cell, tau: float | None = None) -> Prepared:
        """Training and evaluation rows of the cell (at `tau`, else its own), drawn by `Selection`."""
        tau = cell.tau if tau is None else tau
        key = (settings_hash(data_settings(cell.dataset)), tau)
        if key not in self._prepared:
            self._prepared[key] = Prepared(*selection(cell.dataset, tau).draw(self.full(cell.dataset)))
        return self._prepared[key]

    def load(self, model: ModelEntry, adapter: Path | None = None) -> LoadedModel:
        """A fresh copy of a base model (with the fine-tuned adapter merged when given)."""
        return load_model(model.spec, adapter=adapter, device=self.device, precision=self.config.precision)

    def finetuned(self, cell: Cell) -> Path | None:
        """The fine-tuned adapter this cell starts from: trained on first use, then read from the cache."""
        stage = self.config.finetune
        if stage is None:
            return None
        memo = (cell.model.spec, settings_hash(data_settings(cell.dataset)))
        if memo in self._finetuned:
            return self._finetuned[memo]
        rows = self.rows(cell, tau=1.0)
        key = settings_hash(
            {
                "model": cell.model.spec,
                "precision": self.config.precision,
                "template": self.config.template,
                "stage": stage_settings(self.config),
                "seed": cell.dataset.seed,
                "train": rows.training.fingerprint(),
            },
            16,
        )
        folder = self.cache_dir / f"finetuned-{key}"
        if (folder / MANIFEST).is_file():
            self.log(f"  fine-tuned model from the cache: {folder}")
        else:
            self.log(f"  fine-tuning {cell.model.name} on {cell.dataset.label} into {folder}")
            config = train_config({"seed": cell.dataset.seed} | stage.training)
            _, efficiency = self._fit(cell, stage.method, None, 1.0, folder, stage.options, config)
            write_json_atomic(folder / "efficiency.json", efficiency)
        self._finetuned[memo] = folder
        return folder

    def _fit(
        self, cell, method, adapter, tau, out, options, config, eval_each_epoch=False, check_retain=None
    ):
        """Train `method` over the cell's model (+ `adapter`) on its rows at `tau` into `out`, its training
        check scoring `check_retain` rows from outside them when given; (manifest, efficiency). The model
        is loaded here and freed before returning."""
        rows = self.rows(cell, tau)
        drawn = replace(selection(cell.dataset, tau), check_retain=check_retain)
        check_rows = drawn.draw_check(self.full(cell.dataset))
        lm = self.load(cell.model, adapter)
        total = sum(p.numel() for p in lm.model.parameters())
        with PeakMemory(lm.device) as peak:
            manifest = train_artifact(
                method,
                lm,
                rows.training,
                out,
                template=self.template,
                method_options=options,
                config=config,
                eval_data=rows.evaluation,
                eval_each_epoch=eval_each_epoch,
                resume=True,
                batch_size_eval=self.config.eval_batch_size,
                show_progress=self.show_progress,
                selection=drawn.to_manifest(),
                check_retain=check_rows,
            )
        efficiency = _efficiency(manifest, config, total, peak, lm)
        del lm
        gc.collect()
        return manifest, efficiency

    # ---- cells ------------------------------------------------------------------------------------
    def evaluate(self, cell: Cell, folder: Path) -> dict[str, Any]:
        """Score the untouched or the fine-tuned model on the cell's evaluation rows."""
        rows = self.rows(cell, tau=1.0)
        adapter = self.finetuned(cell) if cell.kind == "finetuned" else None
        embed = self.layout.needs_embeddings(cell)
        if adapter is not None and not embed:
            manifest = read_manifest(adapter)
            if manifest["data"]["eval"] == rows.evaluation.fingerprint():
                return {"metrics": manifest["metrics"], "adapter": str(adapter)}
        lm = self.load(cell.model, adapter)
        metrics = evaluate(
            lm,
            rows.evaluation,
            template=self.template,
            batch_size=self.config.eval_batch_size,
            show_progress=self.show_progress,
        )
        if embed:
            self.embed(cell, lm, folder)
        return {"metrics": metrics, "adapter": None if adapter is None else str(adapter)}

    def train(self, cell: Cell, folder: Path) -> dict[str, Any]:
        """Train the cell's method from the model it starts from and score it."""
        method = get_method(cell.method)
        # retrain (the gold standard) starts from the untouched model, every other method from the fine-tuned
        adapter = None if method.from_untouched_model else self.finetuned(cell)
        defaults = method.training_defaults(cell.options)  # e.g. one epoch for the weight baselines
        config = train_config({"seed": cell.dataset.seed} | defaults | cell.training)
        artifact, keep = folder / "artifact", self.config.keep_artifacts
        rule = cell.dataset.forget_rule
        options = with_forget_rule(method, cell.options, rule and rule.regex, rule and rule.keywords)
        run = cell.run
        manifest, efficiency = self._fit(
            cell,
            run.method,
            adapter,
            cell.tau,
            artifact,
            options,
            config,
            run.eval_each_epoch,
            run.check_retain,
        )
        if self.layout.needs_embeddings(cell):
            self.embed_artifact(cell, artifact, folder)
        if not keep:
            shutil.rmtree(artifact, ignore_errors=True)
        return {
            "metrics": manifest["metrics"],
            "artifact_kind": manifest["kind"],
            "method": manifest["method"],
            "hyperparameters": manifest["hyperparameters"],
            "adapter": None if adapter is None else str(adapter),
            "artifact": "artifact" if keep else None,
            "efficiency": efficiency,
            "best_epoch": manifest.get("best_epoch"),
            "history": manifest.get("history", []),
        }

    # ---- states for figure1 -----------------------------------------------------------------------
    def embed_artifact(self, cell: Cell, artifact: Path, folder: Path) -> None:
        """States under the saved artifact as a user gets it: a prompt in front, an adapter merged, the
        unlearned weights, or demonstrations before each text."""
        unlearned = load_unlearned(artifact, device=self.device, precision=self.config.precision)
        self.embed(cell, unlearned.lm, folder, unlearned.prompt, unlearned.encoder)
        del unlearned
        gc.collect()

    def add_embeddings(self, cell: Cell) -> bool:
        """Give a finished cell the states figure1 needs without training it again; False when its
        artifact was not kept (then the cell has to run again)."""
        folder = self.layout.cell_dir(cell)
        if cell.kind == "train":
            artifact = folder / "artifact"
            if not (artifact / MANIFEST).is_file():
                return False
            self.embed_artifact(cell, artifact, folder)
            return True
        adapter = self.finetuned(cell) if cell.kind == "finetuned" else None
        self.embed(cell, self.load(cell.model, adapter), folder)
        gc.collect()
        return True

    def embed(
        self, cell: Cell, lm: LoadedModel, folder: Path, prefix=None, encoder: Encoder | None = None
    ) -> None:
        """Last-layer states at the answer position of figure1's points of the cell's training rows."""
        figure = self.config.figure1
        points = select_points(self.rows(cell, tau=1.0).training, figure.points_per_label, figure.seed)
        hidden = last_hidden_states(
            lm,
            points.texts,
            template=self.template,
            encoder=encoder,
            prefix=prefix,
            batch_size=self.config.eval_batch_size,
        )
        save_embeddings(folder / EMBEDDINGS, hidden, points)


def _efficiency(manifest: dict, config, total: int, peak: PeakMemory, lm: LoadedModel) -> dict[str, Any]:
    """Trainable parameters, time per epoch and peak memory of one training run."""
    seconds = float(manifest["training_time_s"])
    return {
        "trainable_parameters": manifest["trainable_parameters"],
        "model_parameters": total,
        "epochs": config.epochs,
        "training_time_s": seconds,
        "seconds_per_epoch": round(seconds / max(config.epochs, 1), 2),
        "steps": manifest.get("steps"),
        "peak_memory_mib": peak.mib,
        "memory_growth_mib": peak.growth_mib,
        "memory": peak.kind,
        "device": str(lm.device),
        "precision": lm.compute_precision,
    }
