"""Named datasets and `load_data`, the one entry point that turns a data spec into UnlearningData."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from spul.data.hub import load_hub
from spul.data.rules import ForgetRule, TextRule, load_with_rule
from spul.data.sources import load_folder, read_split, table_format
from spul.data.splits import DEFAULT_GENERIC_WORDS, DEFAULT_LABEL_WORDS, SPLITS, Split, UnlearningData
from spul.errors import DataError, SpulError

DATA_DIR_ENV = "SPUL_DATA_DIR"
RULE_HINT = "pass a forget rule (--regex or --keywords; `spul unlearn` also takes --ledger)"


@dataclass(frozen=True)
class Preset:
    """A named dataset: a local layout under the data folder and a HuggingFace hub fallback."""

    description: str
    hub_id: str
    folder: str | None = None  # four split files under the data folder
    raw: tuple[str, str] | None = None  # raw train/test files under the data folder (needs a forget rule)
    hub_splits: tuple[str, str] = ("train", "test")
    offline_note: str = ""

    @property
    def needs_rule(self) -> bool:
        """Raw datasets have no forget split of their own."""
        return self.raw is not None


PRESETS: dict[str, Preset] = {
    "sst2-paper": Preset(
        "SST-2 split by the SPUL paper (forget = sentences naming certain actors/directors)",
        hub_id="karuna-bhaila/Unlearning_SST2v3",
        folder="sst2/spul_v3",
    ),
    "imdb": Preset(
        "IMDB reviews (raw train/test; needs a forget rule)",
        hub_id="stanfordnlp/imdb",
        raw=("imdb/train.csv.gz", "imdb/test.csv.gz"),
    ),
    "sst2": Preset(
        "GLUE SST-2 (raw train/validation; needs a forget rule)",
        hub_id="stanfordnlp/sst2",
        raw=("sst2/train.csv", "sst2/validation.csv"),
        hub_splits=("train", "validation"),
    ),
    "yelp-paper": Preset(
        "Yelp polarity split by the SPUL paper (hub only)",
        hub_id="karuna-bhaila/Unlearning_Yelp_Polarity",
        offline_note=(
            "the Yelp retain splits are not available offline (a local data folder holds only the Yelp "
            "forget splits); run with access to the hub, or use the imdb preset as the long-review dataset"
        ),
    ),
}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The local data folder: the argument, else $SPUL_DATA_DIR, else None (use the hub)."""
    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    return Path(value).expanduser() if value is not None else None


def _looks_like_path(spec: str) -> bool:
    """True for specs meant as local paths (so a missing one is 'not found', not a hub id)."""
    if spec.startswith((".", "/", "~")) or "\\" in spec:
        return True
    try:
        table_format(spec)
        return True
    except DataError:
        pass
    return "/" in spec and Path(spec.split("/", 1)[0]).expanduser().is_dir()


def load_data(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    generic_words: Sequence[str] = DEFAULT_GENERIC_WORDS,
    tau: float = 1.0,
    limit: int | Mapping[str, int] | None = None,
    seed: int = 0,
    forget_rule: ForgetRule | None = None,
    test_path: str | Path | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    strict_overlap: bool = True,
) -> UnlearningData:
    """Load a preset name, a four-split folder, a train file (+ test_path + rule) or a hub id; then sample."""
    common = {
        "label_words": tuple(label_words),
        "generic_words": tuple(generic_words),
        "text_column": text_column,
        "label_column": label_column,
        "strict_overlap": strict_overlap,
    }
    path = Path(spec).expanduser()
    if spec in PRESETS:
        if test_path is not None:
            raise DataError(f"preset {spec} brings its own test split; drop the test path")
        data = _load_preset(spec, resolve_data_dir(data_dir), forget_rule, common)
    elif path.is_dir():
        if forget_rule is not None or test_path is not None:
            raise DataError(f"{path} is a folder of four split files; it takes no forget rule or test path")
        data = load_folder(path, **common)
    elif path.is_file():
        if test_path is None or forget_rule is None:
            raise DataError(
                f"{path} is a single file: give a test file and {RULE_HINT}, "
                "or pass a folder with train_retain, train_forget, test_retain and test_forget files"
            )
        data = load_with_rule(path, test_path, forget_rule, **common)
    elif _looks_like_path(spec):
        raise DataError(f"{spec}: file or folder not found")
    elif "/" in spec:
        data = load_hub(spec, forget_rule=forget_rule, **common)
    else:
        names = ", ".join(PRESETS)
        raise DataError(
            f"unknown dataset {spec!r}: not a preset ({names}), a local path or a HuggingFace id (owner/name)"
        )
    return data.sample(tau=tau, limit=limit, seed=seed)


def _load_preset(name: str, data_dir: Path | None, rule: ForgetRule | None, common: dict) -> UnlearningData:
    """Load a preset from the local data folder when one is configured, else from the hub."""
    preset = PRESETS[name]
    if preset.needs_rule and rule is None:
        raise DataError(
            f"{name} is a raw dataset (train/test only): it needs a forget rule to define the forget set "
            f"({RULE_HINT}), or build a four-split folder first with `spul prepare entity|cluster|ids|regex`"
        )
    if not preset.needs_rule and rule is not None:
        raise DataError(f"preset {name} already defines its forget splits; drop the forget rule")
    if data_dir is not None and (preset.folder or preset.raw):
        if preset.folder:
            folder = data_dir / preset.folder
            if not folder.is_dir():
                raise DataError(f"{name}: folder {folder} not found in the data folder {data_dir}")
            return load_folder(folder, name=name, **common)
        train, test = (data_dir / p for p in preset.raw)
        for path in (train, test):
            if not path.is_file():
                raise DataError(f"{name}: {path} not found in the data folder {data_dir}")
        return load_with_rule(train, test, rule, name=name, **common)
    return load_hub(
        preset.hub_id,
        forget_rule=rule,
        raw_splits=preset.hub_splits,
        unreachable_hint=preset.offline_note,
        **common,
    )


def _merged(a: Split, b: Split, name: str) -> Split:
    """Two splits as one pool (rows keep their own numbering; the source names both files)."""
    return Split(
        name,
        a.texts + b.texts,
        a.labels + b.labels,
        f"{a.source} + {b.source}",
        rows=(a.rows or []) + (b.rows or []),
        line_offset=a.line_offset if a.line_offset == b.line_offset else None,
    )


def pools(
    spec: str,
    *,
    data_dir: str | Path | None,
    test_path: str | Path | None,
    label_words: Sequence[str],
    generic_words: Sequence[str],
) -> tuple[Split, Split]:
    """The training and test rows of a dataset, before any forget rule: raw train/test files as they are,
    a four-split dataset with its forget and retain splits merged back (a new rule decides what to forget)."""
    words = tuple(label_words)
    path = Path(spec).expanduser()
    if path.is_file():
        if test_path is None:
            raise DataError(f"{path} is a single train file: give the test file too (--test)")
        return read_split(path, "train", words), read_split(test_path, "test", words)
    preset = PRESETS.get(spec)
    if preset is not None and preset.raw is not None:
        root = resolve_data_dir(data_dir)
        if root is None:
            raise DataError(
                f"--ledger with {spec} needs its local files: pass --data-dir or set $SPUL_DATA_DIR"
            )
        train, test = (root / p for p in preset.raw)
        return read_split(train, "train", words), read_split(test, "test", words)
    data = load_data(
        spec, data_dir=data_dir, label_words=words, generic_words=tuple(generic_words), strict_overlap=False
    )
    return (
        _merged(data.train_retain, data.train_forget, "train"),
        _merged(data.test_retain, data.test_forget, "test"),
    )


def pooled_data(
    rule: TextRule,
    spec: str,
    *,
    origin: str,
    data_dir: str | Path | None = None,
    test_path: str | Path | None = None,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    generic_words: Sequence[str] = DEFAULT_GENERIC_WORDS,
) -> UnlearningData:
    """The four splits of a dataset's pooled rows with forget = rows `rule` selects (`origin`, e.g. the
    ledger file, names the rule in messages and in the data's name).

    When no test row matches (typical for requests by text), test_forget is the train_forget rows, so the
    table still shows how the prompt answers on the forgotten rows; a warning says so.
    """
    train, test = pools(
        spec, data_dir=data_dir, test_path=test_path, label_words=label_words, generic_words=generic_words
    )
    parts: dict[str, Split] = {}
    warnings = []
    for name, split in (("train", train), ("test", test)):
        flags = rule.select(split.texts)
        forget = [i for i, f in enumerate(flags) if f]
        retain = [i for i, f in enumerate(flags) if not f]
        if name == "train" and not forget:
            raise SpulError(f"{origin}: no request matches any training row of {split.source}")
        if not retain:
            raise SpulError(f"{origin}: the requests match every row of {split.source}")
        parts[f"{name}_retain"] = replace(split.subset(retain), name=f"{name}_retain")
        if forget:
            parts[f"{name}_forget"] = replace(split.subset(forget), name=f"{name}_forget")
    if "test_forget" not in parts:
        parts["test_forget"] = replace(parts["train_forget"], name="test_forget")
        warnings.append(
            f"no test row matches the deletion requests of {origin}: "
            "test_forget shows the train_forget rows again"
        )
    data = UnlearningData(
        {k: parts[k] for k in SPLITS},
        label_words=tuple(label_words),
        generic_words=tuple(generic_words),
        name=f"{Path(spec).name or spec}+{Path(origin).name}",
        warnings=warnings,
    )
    return data.validate()
