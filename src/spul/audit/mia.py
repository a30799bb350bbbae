"""Membership-inference scores from per-token log-probabilities, and their ROC AUC.

Every score is oriented so that a higher value means "more likely a member" (seen in training):
LOSS (Yeom et al. 2018), zlib (Carlini et al. 2021), Min-K% (Shi et al. 2024) and Min-K%++ (Zhang et
al. 2024), plus the loss of the label word alone (the fine-tune trained only on label tokens, so for a
classifier this is the strongest signal) and the probability of a generic answer (what the unlearning
prompt was trained to produce on the forget rows).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

SCORES = ("loss", "label_loss", "zlib", "min_k", "min_k_pp", "generic")
# reference-calibrated scores (open-unlearning's ReferenceAttack, the ratio at the heart of RMIA): the
# score minus the same score under a reference model that never saw any row (the base model before the
# fine-tune), which removes how easy a text is in itself
CALIBRATED = {"loss_ref": "loss", "label_loss_ref": "label_loss"}
SCORE_TITLES = {
    "loss": "LOSS (mean token NLL)",
    "label_loss": "label-word NLL",
    "zlib": "zlib (NLL / zlib length)",
    "min_k": "Min-K%",
    "min_k_pp": "Min-K%++",
    "generic": "P(generic answer)",
    "loss_ref": "LOSS − reference LOSS",
    "label_loss_ref": "label-word NLL − reference",
}


@dataclass
class TokenStats:
    """One sequence's scored tokens: log p(x_t), and mean / std of log p under the next-token distribution."""

    logprobs: np.ndarray  # [T] log p(x_t | x_<t)
    mu: np.ndarray  # [T] E_v[log p(v)] = sum_v p(v) log p(v)
    sigma: np.ndarray  # [T] std_v of log p(v) under p
    label_logprob: float  # log p(label word | prompt), all its tokens
    generic_logprob: float  # log P(first token of any generic word) at the answer position
    text: str  # the full scored text (template + text + answer), for zlib


def lowest_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest fraction `k` of the values (at least one)."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    count = max(1, int(len(values) * k))
    return float(np.sort(values)[:count].mean())


def loss_score(stats: TokenStats) -> float:
    """LOSS: minus the mean token NLL of the whole sequence."""
    return float(stats.logprobs.mean())


def zlib_score(stats: TokenStats) -> float:
    """zlib: minus the mean token NLL divided by the zlib-compressed length of the text in bytes."""
    return float(stats.logprobs.mean()) / len(zlib.compress(stats.text.encode("utf-8")))


def min_k_score(stats: TokenStats, k: float = 0.2) -> float:
    """Min-K%: mean of the lowest k of the token log-probabilities."""
    return lowest_k_mean(stats.logprobs, k)


def min_k_pp_score(stats: TokenStats, k: float = 0.2) -> float:
    """Min-K%++: tokens standardised by the next-token distribution, (log p - mu) / sigma; lowest-k mean."""
    z = (stats.logprobs - stats.mu) / np.maximum(stats.sigma, 1e-6)
    return lowest_k_mean(z, k)


def example_scores(stats: Sequence[TokenStats], k: float = 0.2) -> dict[str, np.ndarray]:
    """Every score for every example, higher = more likely a member."""
    return {
        "loss": np.array([loss_score(s) for s in stats]),
        "label_loss": np.array([s.label_logprob for s in stats]),
        "zlib": np.array([zlib_score(s) for s in stats]),
        "min_k": np.array([min_k_score(s, k) for s in stats]),
        "min_k_pp": np.array([min_k_pp_score(s, k) for s in stats]),
        "generic": np.array([s.generic_logprob for s in stats]),
    }


def calibrated_scores(
    target: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The reference-calibrated scores: each target score minus the reference model's (higher = member)."""
    return {name: target[base] - reference[base] for name, base in CALIBRATED.items()}


def rank_auc(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """ROC AUC by the Mann-Whitney U statistic (ties count half); vectorised over leading axes."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    m, n = members.shape[-1], nonmembers.shape[-1]
    ranks = rankdata(np.concatenate([members, nonmembers], axis=-1), axis=-1)
    return (ranks[..., :m].sum(-1) - m * (m + 1) / 2) / (m * n)


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, fpr: float) -> np.ndarray:
    """True-positive rate of the best threshold whose false-positive rate is at most `fpr` (as read off
    scikit-learn's ROC curve; predicted member = score >= threshold); vectorised over leading axes."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    n = nonmembers.shape[-1]
    allowed = int(np.floor(fpr * n + 1e-9))  # false positives the rate allows
    if allowed >= n:
        return np.ones(members.shape[:-1])
    # the threshold must lie above the (allowed + 1)-th largest non-member score
    bar = np.sort(nonmembers, axis=-1)[..., n - allowed - 1]
    return (members > bar[..., None]).mean(-1)


TPR_FPRS = (0.01, 0.05)


def membership_auc(
    members: Sequence[float],
    nonmembers: Sequence[float],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float | list[float] | int]:
    """ROC AUC (members labelled 1, higher score = member; 0.5 = no signal) and the true-positive rates at
    1% and 5% false positives, each with a bootstrap 95% interval (`bootstrap=0`: none)."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if len(members) == 0 or len(nonmembers) == 0:
        raise ValueError("membership AUC needs at least one member and one non-member")
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    result: dict[str, float | list[float] | int] = {
        "auc": float(roc_auc_score(y, np.r_[members, nonmembers])),
        **{_tpr_key(f): float(tpr_at_fpr(members, nonmembers, f)) for f in TPR_FPRS},
        "members": len(members),
        "nonmembers": len(nonmembers),
    }
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        resampled_m = members[rng.integers(0, len(members), (bootstrap, len(members)))]
        resampled_n = nonmembers[rng.integers(0, len(nonmembers), (bootstrap, len(nonmembers)))]
        result["ci95"] = _interval(rank_auc(resampled_m, resampled_n))
        for f in TPR_FPRS:
            result[_tpr_key(f) + "_ci95"] = _interval(tpr_at_fpr(resampled_m, resampled_n, f))
    return result


def _tpr_key(fpr: float) -> str:
    return f"tpr_at_{fpr * 100:g}%_fpr"


def _interval(values: np.ndarray) -> list[float]:
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]
