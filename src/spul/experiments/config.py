"""The experiment YAML: models, datasets, the fine-tuning stage, runs with sweeps, and what to produce.

A config names base models, datasets (how to load and subsample them), the fine-tuning stage that every
unlearning run starts from, the runs (a registered method, its options, its training settings and an
optional sweep) and the artefacts to write (tables and figures of the paper). See `configs/README.md`.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spul.errors import SpulError
from spul.training import TrainConfig

ARTEFACTS = ("table1", "table2", "table3", "table4", "figure1", "figure2", "efficiency")
TRAIN_FIELDS = {f.name for f in fields(TrainConfig)}
# Sweep keys with a meaning of their own; any other key is a method option (alpha, beta, r, ...).
DATA_KEYS = {"tau"}
OPTION_ALIASES = {"p": "num_virtual_tokens"}
Limit = int | dict[str, int] | None


class Strict(BaseModel):
    """A config section that rejects unknown keys (a typo is an error, not a silent default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(Strict):
    """A base model: the embedded smollm2-135m, a local folder, a .gguf file or a HuggingFace id."""

    spec: str
    label: str | None = None

    @property
    def name(self) -> str:
        """How tables call it."""
        return self.label or self.spec


class ForgetRuleEntry(Strict):
    """How raw data (train/test only) is split into forget and retain: exactly one of the three."""

    regex: str | None = None
    keywords: list[str] | None = None
    ids: str | list[int] | None = None
    test_ids: str | list[int] | None = None

    def build(self):
        """The data layer's rule object."""
        from spul.data import make_rule

        return make_rule(regex=self.regex, keywords=self.keywords, ids=self.ids, test_ids=self.test_ids)


class DatasetEntry(Strict):
    """A dataset and how it is subsampled for training and for evaluation."""

    data: str
    name: str | None = None
    data_dir: str | None = None
    limit: Limit = None  # rows kept per split before anything else (training rows and the test pool)
    eval_limit: Limit = None  # rows scored per split (train splits drawn from the rows trained on)
    tau: float = Field(1.0, gt=0.0, le=1.0)  # fraction of the (limited) forget set to unlearn
    seed: int = 0
    forget_rule: ForgetRuleEntry | None = None
    label_words: list[str] = ["negative", "positive"]
    generic_words: list[str] = ["neutral", "unknown"]
    max_chars: int | None = Field(None, ge=1)  # cut each text to this many characters (long reviews)

    @property
    def label(self) -> str:
        """How tables call it."""
        return self.name or self.data


class StageEntry(Strict):
    """A training stage: a registered method name, its options and its TrainConfig fields."""

    method: str = "finetune"
    options: dict[str, Any] = {}
    training: dict[str, Any] = {}

    @field_validator("training")
    @classmethod
    def _known_training_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - TRAIN_FIELDS)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(TRAIN_FIELDS)}")
        train_config(value)  # type check now, not hours later
        return value


class SelectEntry(Strict):
    """How the method tables (1 and 4) pick one point of a run's sweep, e.g. its learning rate.

    Among the points whose train-retain ACC stays within `retain_within` points of the model unlearning
    starts from (the fine-tuned row, else the vanilla row), the one with the lowest train-forget ACC; when
    none qualifies, the one with the highest train-retain ACC. Only train splits (rows the model was
    trained on, which the deployer has) are looked at: the test splits play no part in the choice.
    """

    retain_within: float = Field(5.0, ge=0)


class RunEntry(StageEntry):
    """An unlearning run; `sweep` maps a key (alpha, beta, p, tau, lr, ...) to the values to try.

    `recipe` (SPUL only) names a starting point from `spul.methods.recipes.RECIPES`, as `spul unlearn
    --recipe` does: its method options and training settings apply unless `options` / `training` say else.
    `seeds` trains each point once per training seed (prompt init, batch order, generic-word draws; the
    rows and the fine-tuned model stay those of the dataset's seed); tables show the mean +- std.
    `check_retain` (SPUL with a training check): the check scores that many train_retain rows from
    outside the training rows, as `spul unlearn --check-retain` does.
    """

    method: str
    recipe: str | None = None
    label: str | None = None
    sweep: dict[str, list[Any]] = {}
    seeds: list[int] = []
    select: SelectEntry | None = None  # method tables show one chosen sweep point (a search), not all
    eval_each_epoch: bool = False
    check_retain: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("recipe") is None:
            return data
        from spul.methods.recipes import RECIPES

        name = data["recipe"]
        if data.get("method") != "spul":
            method = data.get("method")
            raise ValueError(f"recipe {name!r} is a SPUL recipe; method {method!r} does not take it")
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
        data = dict(data)
        data["options"] = RECIPES[name]["method"] | dict(data.get("options") or {})
        data["training"] = RECIPES[name]["training"] | dict(data.get("training") or {})
        return data

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(seed < 0 for seed in value):
            raise ValueError(f"seeds must be distinct and >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _seed_not_swept(self) -> RunEntry:
        if self.seeds and ("seed" in self.sweep or "seed" in self.training):
            raise ValueError("give the training seeds either as `seeds` or in `sweep` / `training`, not both")
        return self

    @model_validator(mode="after")
    def _check_retain_usable(self) -> RunEntry:
        from spul.target import check_retain_problem

        default = self.training.get("check_every", TrainConfig.check_every)
        for check_every in self.sweep.get("check_every", [default]):
            if problem := check_retain_problem(self.check_retain, self.method, check_every):
                raise ValueError(f"check_retain {self.check_retain}: {problem}")
        return self

    @field_validator("sweep")
    @classmethod
    def _non_empty(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"sweep {key!r} has no values")
            if len({repr(v) for v in values}) != len(values):
                raise ValueError(f"sweep {key!r} repeats a value: {values}")
            if key == "model":
                raise ValueError("base models are not swept per run: list them under `models`")
            if key == "tau" and not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in values):
                raise ValueError(f"sweep 'tau' values must be in (0, 1], got {values}")
        return value


class Figure1Entry(Strict):
    """The t-SNE plot: points per (retain/forget, label) drawn from the training rows, and its seed."""

    points_per_label: int = Field(500, ge=2)
    perplexity: float = Field(30.0, gt=0)
    seed: int = 0


class ExperimentConfig(Strict):
    """A whole experiment; `model:` / `dataset:` are shorthands for one-element `models:` / `datasets:`."""

    name: str
    description: str = ""
    models: list[ModelEntry]
    datasets: list[DatasetEntry]
    finetune: StageEntry | None = None
    runs: list[RunEntry] = []
    artefacts: list[Literal[ARTEFACTS]] = ["table1", "efficiency"]  # type: ignore[valid-type]
    vanilla_row: bool = True  # evaluate the untouched base model (the paper's "Vanilla" row)
    finetuned_row: bool = True  # evaluate the fine-tuned model (the paper's "QLoRA" row)
    template: str | None = None
    device: str | None = None
    precision: str = "auto"
    eval_batch_size: int = Field(32, ge=1)
    keep_artifacts: bool = True  # keep each run's trained artifact under cells/<id>/artifact
    # train each run in a fresh process, so the efficiency table's peak memory is that method's alone
    isolate_cells: bool = False
    figure1: Figure1Entry = Figure1Entry()
    out: str | None = None
    cache_dir: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for one, many in (("model", "models"), ("dataset", "datasets")):
            if one in data:
                if many in data:
                    raise ValueError(f"give either {one!r} or {many!r}, not both")
                data[many] = [data.pop(one)]
        data["models"] = [{"spec": m} if isinstance(m, str) else m for m in data.get("models") or []]
        data["datasets"] = [{"data": d} if isinstance(d, str) else d for d in data.get("datasets") or []]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if not self.models:
            raise ValueError("no models given")
        if not self.datasets:
            raise ValueError("no datasets given")
        for what, names in (
            ("model", [m.name for m in self.models]),
            ("dataset", [d.label for d in self.datasets]),
        ):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"{what} {repeated[0]!r} is listed twice (give each a distinct label)")
        specs = [m.spec for m in self.models]
        if len(set(specs)) != len(specs):
            raise ValueError("the same model spec is listed twice")
        reference_row = self.finetuned_row if self.finetune is not None else self.vanilla_row
        for index, run in enumerate(self.runs):
            if run.select is not None and not run.sweep:
                raise ValueError(f"runs.{index}: `select` picks one point of a sweep; the run has no sweep")
            if run.select is not None and not reference_row:
                row = "finetuned_row" if self.finetune is not None else "vanilla_row"
                raise ValueError(f"runs.{index}: `select` compares with the {row}, which is turned off")
        if "figure1" in self.artefacts and not self.runs:
            raise ValueError("figure1 needs at least one run (its 'after unlearning' panel)")
        return self


def train_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a dict of its fields, type-checked."""
    from pydantic import TypeAdapter

    return TypeAdapter(TrainConfig).validate_python(values)


def split_sweep_point(point: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Route one sweep point's values to (data settings, method options, training settings)."""
    data, options, training = {}, {}, {}
    for key, value in point.items():
        if key in DATA_KEYS:
            data[key] = value
        elif key in TRAIN_FIELDS:
            training[key] = value
        else:
            options[OPTION_ALIASES.get(key, key)] = value
    return data, options, training


def _where(loc: tuple) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_config(data: Any, source: str = "config") -> ExperimentConfig:
    """Validate an already-parsed YAML document; errors name the field, e.g. `runs.0.sweep`."""
    if not isinstance(data, dict):
        raise SpulError(f"{source}: expected a mapping of settings at the top level")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in err.errors())
        raise SpulError(f"{source}: {problems}") from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    if not path.is_file():
        raise SpulError(f"{path}: experiment config not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpulError(f"{path}: invalid YAML ({err})".replace("\n", " ")) from None
    return parse_config(data, str(path))
