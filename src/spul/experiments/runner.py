"""Run an experiment cell by cell: resumable, with the fine-tuned model trained once and cached.

Layout of the output folder:
    OUT/config.json                 the validated config of the last run
    OUT/cells/<id>/result.json      a finished cell (written last, atomically: its presence means done)
    OUT/cells/<id>/artifact/        the run's trained artifact (kept unless keep_artifacts: false)
    OUT/cells/<id>/embeddings.safetensors   last-layer states for figure1
    OUT/cache/finetuned-<hash>/     the fine-tuned adapter per (model, training rows, fine-tune settings)
    OUT/<artefact>.md|.csv|.json|.png and OUT/report.md
A cell id hashes the cell's settings, so a rerun skips finished cells; a cell killed while training
continues from its checkpoint (cells/<id>/artifact.ckpt.pt).
"""

from __future__ import annotations

import datetime as dt
import gc
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from spul.artifacts import MANIFEST, read_manifest
from spul.data import load_data
from spul.data.splits import UnlearningData
from spul.errors import SpulError
from spul.evaluation import evaluate
from spul.experiments.cells import Cell, data_settings, expand, settings_hash, stage_settings
from spul.experiments.config import ExperimentConfig, ModelEntry, train_config
from spul.experiments.embeddings import last_hidden_states, save_embeddings, select_points
from spul.experiments.measure import PeakMemory
from spul.io import write_json_atomic
from spul.methods import get_method
from spul.models import LoadedModel, load_model
from spul.pipeline import checkpoint_path, load_unlearned, train_artifact
from spul.prompting import Encoder, Template

RESULT = "result.json"
EMBEDDINGS = "embeddings.safetensors"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def limit_text(limit: int | dict[str, int] | None) -> str | None:
    """A limit written the way `--limit` takes it (so manifests read like CLI runs)."""
    if limit is None or isinstance(limit, int):
        return None if limit is None else str(limit)
    return ",".join(f"{k}={v}" for k, v in limit.items())


@dataclass
class Prepared:
    """The rows a cell trains on and the rows it is scored on."""

    training: UnlearningData
    evaluation: UnlearningData


class Experiment:
    """An expanded config bound to an output folder; `run()` does the pending cells, then the artefacts."""

    def __init__(
        self,
        config: ExperimentConfig,
        out: str | Path,
        *,
        cache_dir: str | Path | None = None,
        device: str | None = None,
        show_progress: bool = True,
        log: Callable[[str], None] | None = None,
    ):
        self.config = config
        self.out = Path(out)
        # absolute: artifacts record the fine-tuned adapter they were trained over by this path
        self.cache_dir = Path(cache_dir or config.cache_dir or self.out / "cache").resolve()
        self.device = device or config.device
        self.show_progress = show_progress
        self.log = log or _stderr
        self.template = Template(config.template) if config.template is not None else Template()
        self.cells = expand(config)
        self._limited: dict[str, UnlearningData] = {}
        self._prepared: dict[tuple[str, float], Prepared] = {}
        self._finetuned: dict[tuple[str, str], Path] = {}

    # ---- where things are -------------------------------------------------------------------------
    def cell_dir(self, cell: Cell) -> Path:
        """The cell's folder."""
        return self.out / "cells" / cell.id

    def result(self, cell: Cell) -> dict[str, Any] | None:
        """The saved result of a finished cell, else None."""
        import json

        path = self.cell_dir(cell) / RESULT
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def needs_embeddings(self, cell: Cell) -> bool:
        """Figure 1 needs states of every run ('after') and of the model they start from ('before')."""
        if "figure1" not in self.config.artefacts:
            return False
        before = "finetuned" if self.config.finetune is not None else "vanilla"
        return cell.kind in ("train", before)

    def is_done(self, cell: Cell) -> bool:
        """Finished, with its embeddings where figure1 needs them."""
        folder = self.cell_dir(cell)
        if not (folder / RESULT).is_file():
            return False
        return not self.needs_embeddings(cell) or (folder / EMBEDDINGS).is_file()

    def status(self) -> list[tuple[Cell, str]]:
        """Each cell with `done`, `partial` (a training checkpoint exists) or `pending`."""
        states = []
        for cell in self.cells:
            if self.is_done(cell):
                state = "done"
            elif checkpoint_path(self.cell_dir(cell) / "artifact").is_file():
                state = "partial"
            else:
                state = "pending"
            states.append((cell, state))
        return states

    # ---- checks -----------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail before any work when a method is unknown, takes no such option or cannot serve its role."""
        if self.config.finetune is not None:
            stage = get_method(self.config.finetune.method)
            if stage.kind != "adapter":
                raise SpulError(
                    f"finetune.method {stage.name!r} makes a {stage.kind}; the fine-tuning stage needs a "
                    "method that trains a LoRA adapter (e.g. finetune)"
                )
        for index, run in enumerate(self.config.runs):
            try:
                method = get_method(run.method)
            except SpulError as err:
                raise SpulError(f"runs.{index}: {err}") from None
            names = method.option_names()
            for cell in self.cells:
                unknown = sorted(set(cell.options) - names) if cell.run is run else []
                if unknown:
                    raise SpulError(
                        f"runs.{index}: method {run.method!r} has no option {', '.join(unknown)} "
                        f"(its options: {', '.join(sorted(names)) or 'none'})"
                    )

    # ---- data and the fine-tuned model ------------------------------------------------------------
    def limited(self, cell: Cell) -> UnlearningData:
        """The dataset loaded once, texts cut to max_chars, split sizes capped by `limit`."""
        dataset = cell.dataset
        key = settings_hash(data_settings(dataset))
        if key not in self._limited:
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
            full = full.cut(dataset.max_chars)
            self._limited[key] = full.sample(limit=dataset.limit, seed=dataset.seed)
        return self._limited[key]

    def prepared(self, cell: Cell, tau: float | None = None) -> Prepared:
        """Training rows (tau of the limited forget set) and evaluation rows: train splits drawn from the
        rows trained on, test splits from the limited test data, each capped by `eval_limit`."""
        dataset = cell.dataset
        tau = cell.tau if tau is None else tau
        key = (settings_hash(data_settings(dataset)), tau)
        if key not in self._prepared:
            limited = self.limited(cell)
            training = limited.sample(tau=tau, seed=dataset.seed)
            cap = dataset.eval_limit
            if cap is None:
                evaluation = training
            else:
                train_part = training.sample(limit=cap, seed=dataset.seed)
                test_part = limited.sample(limit=cap, seed=dataset.seed)
                splits = {n: (train_part if n.startswith("train") else test_part)[n] for n in training.splits}
                evaluation = replace(training, splits=splits, warnings=[])
            self._prepared[key] = Prepared(training, evaluation)
        return self._prepared[key]

    def selection(self, cell: Cell, tau: float) -> dict[str, Any]:
        """How the training rows were drawn, recorded in manifests."""
        dataset = cell.dataset
        return {
            "data": dataset.data,
            "limit": limit_text(dataset.limit),
            "tau": tau,
            "seed": dataset.seed,
            "max_chars": dataset.max_chars,
            "order": "limit, then tau",
        }

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
        rows = self.prepared(cell, tau=1.0)
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
            lm = self.load(cell.model)
            total = _parameters(lm)
            config = train_config({"seed": cell.dataset.seed} | stage.training)
            with PeakMemory(lm.device) as peak:
                manifest = train_artifact(
                    stage.method,
                    lm,
                    rows.training,
                    folder,
                    template=self.template,
                    method_options=stage.options,
                    config=config,
                    eval_data=rows.evaluation,
                    resume=True,
                    batch_size_eval=self.config.eval_batch_size,
                    show_progress=self.show_progress,
                    selection=self.selection(cell, 1.0),
                )
            write_json_atomic(folder / "efficiency.json", _efficiency(manifest, config, total, peak, lm))
            del lm
            gc.collect()
        self._finetuned[memo] = folder
        return folder

    # ---- cells ------------------------------------------------------------------------------------
    def run_cell(self, cell: Cell) -> dict[str, Any]:
        """Do one cell and write its result (the last file written, atomically)."""
        start = time.perf_counter()
        folder = self.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        if cell.kind == "train":
            result = self._train(cell, folder)
        else:
            result = self._evaluate(cell, folder)
        result = {
            "id": cell.id,
            "kind": cell.kind,
            "label": cell.label,
            "model": cell.model.spec,
            "data": cell.dataset.label,
            "sweep": cell.sweep,
            "settings": cell.settings,
        } | result
        result["wall_time_s"] = round(time.perf_counter() - start, 2)
        result["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(folder / RESULT, result)
        gc.collect()
        return result

    def _evaluate(self, cell: Cell, folder: Path) -> dict[str, Any]:
        rows = self.prepared(cell, tau=1.0)
        adapter = self.finetuned(cell) if cell.kind == "finetuned" else None
        embed = self.needs_embeddings(cell)
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
            self._embed(cell, lm, folder)
        return {"metrics": metrics, "adapter": None if adapter is None else str(adapter)}

    def _train(self, cell: Cell, folder: Path) -> dict[str, Any]:
        rows = self.prepared(cell)
        method = get_method(cell.method)
        # retrain (the gold standard) starts from the untouched model, every other method from the fine-tuned
        adapter = None if method.from_untouched_model else self.finetuned(cell)
        lm = self.load(cell.model, adapter)
        total = _parameters(lm)
        defaults = method.training_defaults(cell.options)  # e.g. one epoch for the weight baselines
        config = train_config({"seed": cell.dataset.seed} | defaults | cell.training)
        artifact = folder / "artifact"
        with PeakMemory(lm.device) as peak:
            manifest = train_artifact(
                cell.method,
                lm,
                rows.training,
                artifact,
                template=self.template,
                method_options=cell.options,
                config=config,
                eval_data=rows.evaluation,
                eval_each_epoch=cell.run.eval_each_epoch,
                resume=True,
                batch_size_eval=self.config.eval_batch_size,
                show_progress=self.show_progress,
                selection=self.selection(cell, cell.tau),
            )
        efficiency = _efficiency(manifest, config, total, peak, lm)
        del lm
        gc.collect()
        if self.needs_embeddings(cell):
            self._embed_artifact(cell, artifact, folder)
        if not self.config.keep_artifacts:
            shutil.rmtree(artifact, ignore_errors=True)
        return {
            "metrics": manifest["metrics"],
            "artifact_kind": manifest["kind"],
            "method": manifest["method"],
            "hyperparameters": manifest["hyperparameters"],
            "adapter": None if adapter is None else str(adapter),
            "artifact": "artifact" if self.config.keep_artifacts else None,
            "efficiency": efficiency,
            "best_epoch": manifest.get("best_epoch"),
            "history": manifest.get("history", []),
        }

    def _embed_artifact(self, cell: Cell, artifact: Path, folder: Path) -> None:
        """States under the saved artifact as a user gets it: a prompt in front, an adapter merged, the
        unlearned weights, or demonstrations before each text."""
        unlearned = load_unlearned(artifact, device=self.device, precision=self.config.precision)
        self._embed(cell, unlearned.lm, folder, unlearned.prompt, unlearned.encoder)
        del unlearned
        gc.collect()

    def add_embeddings(self, cell: Cell) -> bool:
        """Give a finished cell the states figure1 needs without training it again; False when its
        artifact was not kept (then the cell has to run again)."""
        folder = self.cell_dir(cell)
        if cell.kind == "train":
            artifact = folder / "artifact"
            if not (artifact / MANIFEST).is_file():
                return False
            self._embed_artifact(cell, artifact, folder)
            return True
        adapter = self.finetuned(cell) if cell.kind == "finetuned" else None
        self._embed(cell, self.load(cell.model, adapter), folder)
        gc.collect()
        return True

    def _embed(
        self, cell: Cell, lm: LoadedModel, folder: Path, prefix=None, encoder: Encoder | None = None
    ) -> None:
        figure = self.config.figure1
        points = select_points(self.prepared(cell, tau=1.0).training, figure.points_per_label, figure.seed)
        hidden = last_hidden_states(
            lm,
            points.texts,
            template=self.template,
            encoder=encoder,
            prefix=prefix,
            batch_size=self.config.eval_batch_size,
        )
        save_embeddings(folder / EMBEDDINGS, hidden, points)

    def run_cell_in_child(self, cell: Cell) -> None:
        """Run one cell in a fresh `spul experiment --cell` process (its own peak memory); on Ctrl-C wait
        for the child to save its checkpoint before stopping."""
        command = [sys.executable, "-m", "spul", "experiment", str(self.out / "config.json")]
        command += ["--out", str(self.out), "--cache-dir", str(self.cache_dir), "--cell", cell.id]
        command += ["--device", self.device] if self.device else []
        command += [] if self.show_progress else ["--quiet"]
        child = subprocess.Popen(command)
        try:
            code = child.wait()
        except KeyboardInterrupt:
            child.wait()  # the child got the same Ctrl-C and checkpoints
            raise
        if code != 0 or self.result(cell) is None:
            raise SpulError(f"cell {cell.id} ({cell.describe()}) failed in its own process (exit {code})")

        # ---- the whole experiment ---------------------------------------------------------------------

    def run(self) -> list[tuple[Cell, dict[str, Any]]]:
        """Run every pending cell in order, then write the tables and figures; return (cell, result)."""
        self.check()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "config.json", self.config.model_dump())
        total = len(self.cells)
        done = sum(self.is_done(c) for c in self.cells)
        self.log(f"experiment {self.config.name}: {total} cells, {done} already done, output in {self.out}")
        results = []
        for number, cell in enumerate(self.cells, 1):
            where = f"[{number}/{total}] {cell.id} {cell.describe()}"
            if self.is_done(cell):
                self.log(f"{where}: done before, skipped")
            elif self.result(cell) is not None and self.add_embeddings(cell):
                self.log(f"{where}: done before; added the states figure1 needs")
            else:
                self.log(f"{where}: running")
                start = time.perf_counter()
                if self.config.isolate_cells and cell.kind == "train":
                    self.run_cell_in_child(cell)
                else:
                    self.run_cell(cell)
                self.log(f"{where}: finished in {time.perf_counter() - start:.0f} s")
            results.append((cell, self.result(cell)))
        from spul.experiments.outputs import write_outputs

        written = write_outputs(self, results)
        self.log(f"wrote {', '.join(str(p.name) for p in written)} in {self.out}")
        return results


def _parameters(lm: LoadedModel) -> int:
    return sum(p.numel() for p in lm.model.parameters())


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
    }


def run_experiment(
    config: ExperimentConfig,
    out: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Experiment:
    """Run (or resume) an experiment in `out` (else the config's `out`, else runs/experiments/NAME)."""
    folder = Path(out or config.out or Path("runs") / "experiments" / config.name)
    experiment = Experiment(
        config, folder, cache_dir=cache_dir, device=device, show_progress=show_progress, log=log
    )
    experiment.run()
    return experiment
