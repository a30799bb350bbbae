"""An experiment expanded into cells: one evaluation or one training run each, with a stable id."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from spul.experiments.config import (
    OPTION_ALIASES,
    DatasetEntry,
    ExperimentConfig,
    ModelEntry,
    RunEntry,
    split_sweep_point,
)

KINDS = ("vanilla", "finetuned", "train")


def settings_hash(settings: dict[str, Any], length: int = 12) -> str:
    """Stable short hash of JSON-able settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def data_settings(dataset: DatasetEntry) -> dict[str, Any]:
    """What determines a dataset's rows (its display name does not)."""
    return dataset.model_dump(exclude={"name", "tau"})


def stage_settings(config: ExperimentConfig) -> dict[str, Any] | None:
    """What determines the fine-tuned model a run starts from."""
    return None if config.finetune is None else config.finetune.model_dump()


def method_label(run: RunEntry) -> str:
    """The name a run's rows carry in tables: its label, else the method's own (SPUL, GA+KL, ...)."""
    from spul.methods import METHODS

    if run.label:
        return run.label
    return METHODS[run.method].display_name() if run.method in METHODS else run.method


@dataclass(frozen=True)
class Cell:
    """One unit of work: evaluate the vanilla or fine-tuned model, or train and evaluate one run."""

    kind: str
    model: ModelEntry
    dataset: DatasetEntry
    tau: float = 1.0
    run: RunEntry | None = None
    sweep: dict[str, Any] = field(default_factory=dict)  # this cell's point of the run's sweep
    options: dict[str, Any] = field(default_factory=dict)  # method options with the sweep applied
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields with the sweep applied
    seed: int | None = None  # the training seed, for a run with `seeds`
    settings: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def id(self) -> str:
        """Hash of everything that determines the cell's result."""
        return settings_hash(self.settings)

    @property
    def method(self) -> str | None:
        """The registered method a train cell runs."""
        return None if self.run is None else self.run.method

    @property
    def label(self) -> str:
        """Row name: Vanilla, Fine-tuned, or the run's label."""
        if self.kind == "vanilla":
            return "Vanilla"
        if self.kind == "finetuned":
            return "Fine-tuned"
        return method_label(self.run)

    def describe(self) -> str:
        """One line for progress and --dry-run: what, on which model and data, with which sweep point."""
        point = ", ".join(f"{k}={v}" for k, v in self.sweep.items())
        if self.seed is not None:
            point = ", ".join(p for p in (point, f"seed={self.seed}") if p)
        extra = f" ({point})" if point else ""
        return f"{self.label}{extra} | {self.model.name} | {self.dataset.label}"


def _cell(kind: str, config: ExperimentConfig, model: ModelEntry, dataset: DatasetEntry, **kw) -> Cell:
    run: RunEntry | None = kw.get("run")
    tau = kw.get("tau", 1.0)
    settings = {
        "kind": kind,
        "model": model.spec,
        "data": data_settings(dataset),
        "template": config.template,
        "precision": config.precision,
    }
    if kind != "vanilla":
        settings["finetune"] = stage_settings(config)
    if kind == "train":
        settings |= {
            "tau": tau,
            "method": run.method,
            "options": kw["options"],
            "training": without_defaults(run.method, kw["options"], kw["training"], dataset.seed),
            "eval_each_epoch": run.eval_each_epoch,
        }
        if run.check_retain is not None:  # (absent otherwise: earlier cells keep their ids)
            settings["check_retain"] = run.check_retain
        if revision := method_revision(run.method, kw["options"]):  # (likewise)
            settings["revision"] = revision
    rest = {k: v for k, v in kw.items() if k != "tau"}
    return Cell(kind, model, dataset, tau=tau, settings=settings, **rest)


def method_revision(method: str, options: dict[str, Any]) -> int:
    """The revision of the method's run with these options (`Method.revision_of`); 0 for a name not
    registered (reported elsewhere)."""
    from spul.methods import METHODS

    return METHODS[method].revision_of(options) if method in METHODS else 0


def without_defaults(
    method: str, options: dict[str, Any], training: dict[str, Any], data_seed: int
) -> dict[str, Any]:
    """Training settings less those equal to the method's own default (writing a default out is the same
    cell as leaving it out, so e.g. sweeping lr over the default reuses the finished default cell); the
    training seed defaults to the dataset's."""
    from spul.methods import METHODS

    if method not in METHODS:  # reported by Experiment.check with the run's index
        return training
    defaults = METHODS[method].training_defaults(options) | {"seed": data_seed}
    return {k: v for k, v in training.items() if k not in defaults or defaults[k] != v}


def aliased(options: dict[str, Any]) -> dict[str, Any]:
    """Method options with short names expanded (`p` -> `num_virtual_tokens`)."""
    return {OPTION_ALIASES.get(k, k): v for k, v in options.items()}


def sweep_points(run: RunEntry) -> list[dict[str, Any]]:
    """The cartesian product of a run's sweep, in the order written (one empty point without a sweep)."""
    keys = list(run.sweep)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*run.sweep.values())]


def expand(config: ExperimentConfig) -> list[Cell]:
    """Every cell of the experiment, in running order: per model and dataset, baselines then runs."""
    cells: list[Cell] = []
    want_before = "figure1" in config.artefacts
    for model in config.models:
        for dataset in config.datasets:
            if config.vanilla_row or (want_before and config.finetune is None):
                cells.append(_cell("vanilla", config, model, dataset))
            if config.finetune is not None and (config.finetuned_row or want_before):
                cells.append(_cell("finetuned", config, model, dataset))
            for run in config.runs:
                for point in sweep_points(run):
                    data, options, training = split_sweep_point(point)
                    for seed in run.seeds or [None]:
                        cells.append(
                            _cell(
                                "train",
                                config,
                                model,
                                dataset,
                                run=run,
                                sweep=point,
                                seed=seed,
                                tau=data.get("tau", dataset.tau),
                                options=aliased(run.options) | options,
                                training=run.training | training | ({} if seed is None else {"seed": seed}),
                            )
                        )
    ids = [c.id for c in cells]
    for cell in cells:
        if ids.count(cell.id) > 1:
            from spul.errors import SpulError

            raise SpulError(f"{config.name}: two cells have the same settings ({cell.describe()})")
    return cells
