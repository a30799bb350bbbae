"""Loading unlearning data from the HuggingFace hub (optional `datasets` package, imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence

from spul.data.rules import ForgetRule, apply_rule
from spul.data.sources import table_to_split
from spul.data.splits import DEFAULT_GENERIC_WORDS, DEFAULT_LABEL_WORDS, SPLITS, Split, UnlearningData
from spul.errors import DataError


def _normalise(name: str) -> str:
    """Split names compared case-insensitively, `-` same as `_`."""
    return name.strip().lower().replace("-", "_")


def fetch_hub(dataset_id: str, unreachable_hint: str = "") -> dict:
    """`datasets.load_dataset(dataset_id)` as a dict of split name -> dataset; DataError if impossible."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"loading {dataset_id!r} from the HuggingFace hub needs the `datasets` package: "
            "pip install datasets (or pip install 'spul[hub]'); "
            + (unreachable_hint or "or pass a local data folder")
        ) from exc
    try:
        return dict(datasets.load_dataset(dataset_id))
    except Exception as exc:  # offline, DNS, timeouts, HTTP errors, not found: all end here
        hint = unreachable_hint or (
            "pass a local folder (with train_retain.csv, train_forget.csv, test_retain.csv, "
            "test_forget.csv) or set SPUL_DATA_DIR"
        )
        raise DataError(
            f"could not reach the HuggingFace hub for dataset {dataset_id}; {hint} "
            f"({type(exc).__name__}: {exc})"
        ) from exc


# Loader signature shared with rules.load_with_rule and sources.load_folder: the same options on purpose.
def load_hub(
    dataset_id: str,
    *,
    label_words: Sequence[str] = DEFAULT_LABEL_WORDS,
    generic_words: Sequence[str] = DEFAULT_GENERIC_WORDS,
    text_column: str | None = None,
    label_column: str | None = None,
    forget_rule: ForgetRule | None = None,
    raw_splits: tuple[str, str] = ("train", "test"),
    unreachable_hint: str = "",
    strict_overlap: bool = True,
) -> UnlearningData:
    """Load a hub dataset with the four splits, or raw train/test splits plus a forget rule."""
    available = {_normalise(k): v for k, v in fetch_hub(dataset_id, unreachable_hint).items()}

    def split(hub_name: str, name: str) -> Split:
        """One hub split as a Split (rows numbered from 1, no file lines)."""
        frame = available[hub_name].to_pandas()
        return table_to_split(
            frame, f"hf:{dataset_id}[{hub_name}]", name, label_words, text_column, label_column, None
        )

    if forget_rule is None and all(s in available for s in SPLITS):
        data = UnlearningData(
            splits={s: split(s, s) for s in SPLITS},
            label_words=tuple(label_words),
            generic_words=tuple(generic_words),
            name=dataset_id,
        )
        return data.validate(strict_overlap=strict_overlap)
    train_name, test_name = raw_splits
    if forget_rule is not None and train_name in available and test_name in available:
        return apply_rule(
            split(train_name, "train"),
            split(test_name, "test"),
            forget_rule,
            label_words=label_words,
            generic_words=generic_words,
            name=dataset_id,
            strict_overlap=strict_overlap,
        )
    wanted = f"{train_name}/{test_name} with a forget rule" if forget_rule else ", ".join(SPLITS)
    raise DataError(f"hub dataset {dataset_id} has splits {sorted(available)}; expected {wanted}")
