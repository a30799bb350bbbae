"""Membership AUCs of known value: separable scores give 1.0 (or 0.0 reversed), constant ones 0.5, and the
bootstrap's rank AUC equals scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from spul.audit.mia import membership_auc, rank_auc


def test_separable_scores_give_auc_one_and_reversed_zero():
    members, nonmembers = [5.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0]
    found = membership_auc(members, nonmembers, bootstrap=200)
    assert found["auc"] == 1.0 and found["tpr_at_5%_fpr"] == 1.0
    assert found["ci95"] == [1.0, 1.0]
    assert membership_auc(nonmembers, members, bootstrap=0)["auc"] == 0.0


def test_constant_scores_give_one_half():
    found = membership_auc([0.3] * 6, [0.3] * 6, bootstrap=100)
    assert found["auc"] == 0.5 and found["ci95"] == [0.5, 0.5]


def test_rank_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.integers(0, 5, 9).astype(float), rng.integers(0, 5, 7).astype(float)
    expected = roc_auc_score(np.r_[np.ones(9), np.zeros(7)], np.r_[members, nonmembers])
    assert float(rank_auc(members, nonmembers)) == pytest.approx(expected)
    assert membership_auc(members, nonmembers, bootstrap=0)["auc"] == pytest.approx(expected)
