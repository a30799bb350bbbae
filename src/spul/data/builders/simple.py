"""The plain builders: forget rows chosen by a text rule (regex, keywords) or by input-file row ids."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from spul.data.builders.common import Inputs, Selection
from spul.data.rules import IdRule, TextRule
from spul.errors import DataError


def rule_selector(rule: TextRule) -> Callable[[Inputs], Selection]:
    """A builder step flagging the texts a text rule selects."""

    def select(inputs: Inputs) -> Selection:
        """Apply the rule to train and test texts alike."""
        return Selection(rule.select(inputs.train.texts), rule.select(inputs.test.texts), rule.describe())

    return select


def id_selector(
    train_ids: Iterable[int] | str | Path, test_ids: Iterable[int] | str | Path | None = None
) -> Callable[[Inputs], Selection]:
    """A builder step flagging rows by their 0-based data row in the input train/test files.

    The ids follow the rows through pooling and re-splitting (a train-file row drawn into the new test set
    is test_forget there).
    """
    rule = IdRule.load(train_ids, test_ids)

    def select(inputs: Inputs) -> Selection:
        """Flag rows whose (input file, row id) was listed; DataError for ids past a file's end."""
        wanted = {"train": set(rule.train_ids), "test": set(rule.test_ids or [])}
        for role, ids in wanted.items():
            size = inputs.sources[role]["rows"]
            past = sorted(i for i in ids if i >= size)
            if past:
                raise DataError(
                    f"forget id {past[0]} out of range: {inputs.sources[role]['path']} has {size} data rows "
                    f"(ids are 0-based, so 0..{size - 1})"
                )
        flags = [
            [i in wanted[o] for o, i in zip(rows.origin, rows.origin_id, strict=True)]
            for rows in (inputs.train, inputs.test)
        ]
        return Selection(flags[0], flags[1], rule.describe(), {"ids": {k: len(v) for k, v in wanted.items()}})

    return select
