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


@pytest.mark.parametrize("seed", range(6))
def test_tpr_at_low_fpr_equals_the_roc_curve_reading(seed):
    from sklearn.metrics import roc_curve

    from spul.audit.mia import tpr_at_fpr

    rng = np.random.default_rng(seed)
    members = rng.normal(0.5, 1, 150).round(1)  # rounded: ties between members and non-members
    nonmembers = rng.normal(0, 1, 120 + seed).round(1)
    fpr, tpr, _ = roc_curve(np.r_[np.ones(150), np.zeros(len(nonmembers))], np.r_[members, nonmembers])
    for at in (0.01, 0.05, 0.29, 0.5):
        assert float(tpr_at_fpr(members, nonmembers, at)) == pytest.approx(tpr[fpr <= at + 1e-12].max())
    found = membership_auc(members, nonmembers, bootstrap=300, seed=seed)
    for key in ("tpr_at_1%_fpr", "tpr_at_5%_fpr"):
        low, high = found[f"{key}_ci95"]
        assert 0.0 <= low <= found[key] <= high <= 1.0


def test_reference_calibration_removes_what_the_reference_also_finds_easy():
    from spul.audit.mia import calibrated_scores

    # members look easy to the target only because the texts are easy (the reference agrees): no signal
    easy, hard = np.array([-0.1, -0.2, -0.3]), np.array([-1.1, -1.2, -1.3])
    target = {"loss": easy, "label_loss": easy + 0.05}
    reference = {"loss": easy - 0.5, "label_loss": easy - 0.45}
    calibrated = calibrated_scores(target, reference)
    assert calibrated["loss_ref"] == pytest.approx([0.5, 0.5, 0.5])
    assert set(calibrated) == {"loss_ref", "label_loss_ref"}
    # a member the target fits better than the reference scores higher than a non-member it does not
    members = calibrated_scores(
        {"loss": easy, "label_loss": easy}, {"loss": easy - 1, "label_loss": easy - 1}
    )
    others = calibrated_scores({"loss": hard, "label_loss": hard}, {"loss": hard, "label_loss": hard})
    assert membership_auc(members["loss_ref"], others["loss_ref"], bootstrap=0)["auc"] == 1.0
    assert membership_auc(easy, hard, bootstrap=0)["auc"] == 1.0  # uncalibrated: fooled by easy texts too


@pytest.mark.parametrize(
    ("adapter", "shares_base", "loads"),
    [(None, True, False), ("ft", True, True), (None, False, True), ("ft", False, True)],
)
def test_reference_model_is_the_base_unless_the_audited_model_is_the_base(adapter, shares_base, loads):
    """A prompt over the plain base model has no reference (it *is* the base); a fine-tuned adapter or a
    retrain / weight artifact gets the base model before any fine-tune."""
    from types import SimpleNamespace

    from spul.unlearned import Unlearned

    artifact = SimpleNamespace(
        base_adapter=adapter,
        artifact_kind=SimpleNamespace(shares_base_model=shares_base),
        manifest={"base_model": {"spec": "the-base"}},
    )
    loaded = []
    found = Unlearned.untouched_base(artifact, lambda spec: loaded.append(spec) or f"model {spec}")
    assert found == ("model the-base" if loads else None)
    assert loaded == (["the-base"] if loads else [])
