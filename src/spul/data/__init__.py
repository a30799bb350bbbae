"""Unlearning data: the four splits (train/test x retain/forget), loaders, forget rules and presets."""

from spul.data.hub import load_hub
from spul.data.presets import DATA_DIR_ENV, PRESETS, Preset, load_data, resolve_data_dir
from spul.data.rules import ForgetRule, IdRule, KeywordRule, RegexRule, TextRule, load_with_rule, make_rule
from spul.data.sources import FORMATS, load_folder, read_split, read_table, table_to_split
from spul.data.splits import (
    DEFAULT_GENERIC_WORDS,
    DEFAULT_LABEL_WORDS,
    SPLITS,
    Split,
    UnlearningData,
)

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_GENERIC_WORDS",
    "DEFAULT_LABEL_WORDS",
    "FORMATS",
    "PRESETS",
    "SPLITS",
    "ForgetRule",
    "IdRule",
    "KeywordRule",
    "Preset",
    "RegexRule",
    "Split",
    "TextRule",
    "UnlearningData",
    "load_data",
    "load_folder",
    "load_hub",
    "load_with_rule",
    "make_rule",
    "read_split",
    "read_table",
    "resolve_data_dir",
    "table_to_split",
]
