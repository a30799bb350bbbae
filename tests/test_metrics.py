"""`split_metrics` against scikit-learn on generated labels and predictions, `other` (-1) answers included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score

from spul.metrics import split_metrics


@st.composite
def labelled(draw):
    """(labels, predictions, number of labels): predictions may be -1, an answer that is no label."""
    k = draw(st.integers(2, 4))
    n = draw(st.integers(1, 40))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    predicted = draw(st.lists(st.integers(-1, k - 1), min_size=n, max_size=n))
    return labels, predicted, k


@settings(max_examples=200, deadline=None)
@given(labelled())
def test_split_metrics_equal_sklearn(case):
    labels, predicted, k = case
    got = split_metrics(labels, predicted, k)
    assert got["n"] == len(labels)
    assert got["acc"] == pytest.approx(100 * accuracy_score(labels, predicted))
    # support-weighted F1 over the task labels only: -1 has no support, it only lowers recall
    f1 = f1_score(labels, predicted, labels=list(range(k)), average="weighted", zero_division=0)
    assert got["f1"] == pytest.approx(100 * f1)
    assert got["other"] == pytest.approx(100 * np.mean(np.asarray(predicted) == -1))


def test_other_answers_are_wrong_and_counted_by_hand():
    # true 0,0,1,1; predicted 0,-1,1,-1: ACC 50; F1 of each class 2/3 (precision 1, recall 1/2)
    got = split_metrics([0, 0, 1, 1], [0, -1, 1, -1], 2)
    assert got == pytest.approx({"acc": 50.0, "f1": 100 * 2 / 3, "other": 50.0, "n": 4})
