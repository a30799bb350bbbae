"""Guardrail baselines: the keyword filter derived from the forget set and the embedding gate."""

from __future__ import annotations

import numpy as np
import pytest

from spul.errors import SpulError
from spul.guardrails import EmbeddingGate, KeywordFilter


class _Finder:
    """Stands in for spaCy: every word is a candidate name."""

    method = "test"

    def fit(self, forget, retain, ratio=10.0):
        from collections import Counter

        def df(texts):
            c = Counter()
            for t in texts:
                c.update(set(t.split()))
            return c

        f, r = df(forget), df(retain)
        self.lexicon = {w for w in f if len(w) > 2 and f[w] / len(forget) > ratio * r[w] / len(retain)}
        return self


def test_filter_keeps_forget_names_and_matches_whole_words():
    forget = ["sandler is funny", "a sandler film", "spielberg at his best"]
    retain = ["a funny film", "at his best", "the film is bleak"] * 5
    rule = KeywordFilter.derive(forget, retain, finder=_Finder())
    assert {"sandler", "spielberg"} <= set(rule.keywords)
    assert "film" not in rule.keywords  # as common in retain: never a keyword
    flags = rule.flags(["Sandler's new one", "sandlerish", "a film", "SPIELBERG!"])
    assert flags.tolist() == [True, False, False, True]


def test_filter_round_trips_and_rejects_bad_rules():
    rule = KeywordFilter(("sandler",), regex=r"de\s+niro")
    again = KeywordFilter.from_json(rule.to_json())
    assert again == rule
    assert again.flags(["with de  niro", "nothing"]).tolist() == [True, False]
    with pytest.raises(SpulError, match="regex"):
        KeywordFilter.from_json({"keywords": [], "regex": "("})
    with pytest.raises(SpulError, match="keywords"):
        KeywordFilter.from_json({"keywords": [""]})


def test_gate_separates_and_thresholds_on_training_rows_only(tmp_path):
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    forget = rng.normal(size=(60, 16)) + 2 * direction
    retain = rng.normal(size=(200, 16)) - 2 * direction
    gate = EmbeddingGate.fit(forget, retain, seed=0)
    assert gate.flags(forget).mean() > 0.9 and gate.flags(retain).mean() < 0.1
    gate.save(tmp_path)
    again = EmbeddingGate.load(tmp_path)
    assert np.array_equal(again.flags(retain), gate.flags(retain))
    assert again.threshold == gate.threshold
    (tmp_path / "gate.json").write_text("{}")
    with pytest.raises(SpulError, match="unreadable gate"):
        EmbeddingGate.load(tmp_path)


def test_gate_needs_rows_of_both_kinds():
    with pytest.raises(SpulError, match="at least"):
        EmbeddingGate.fit(np.zeros((2, 4)), np.ones((50, 4)))
