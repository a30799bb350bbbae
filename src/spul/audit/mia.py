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
from sklearn.metrics import roc_auc_score, roc_curve

SCORES = ("loss", "label_loss", "zlib", "min_k", "min_k_pp", "generic")
SCORE_TITLES = {
    "loss": "LOSS (mean token NLL)",
    "label_loss": "label-word NLL",
    "zlib": "zlib (NLL / zlib length)",
    "min_k": "Min-K%",
    "min_k_pp": "Min-K%++",
    "generic": "P(generic answer)",
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


def rank_auc(members: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """ROC AUC by the Mann-Whitney U statistic (ties count half); vectorised over leading axes."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    m, n = members.shape[-1], nonmembers.shape[-1]
    ranks = rankdata(np.concatenate([members, nonmembers], axis=-1), axis=-1)
    return (ranks[..., :m].sum(-1) - m * (m + 1) / 2) / (m * n)


def membership_auc(
    members: Sequence[float],
    nonmembers: Sequence[float],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    fpr: float = 0.05,
) -> dict[str, float | list[float] | int]:
    """ROC AUC (members labelled 1, higher score = member; 0.5 = no signal), a bootstrap 95% interval,
    and the true-positive rate at a low false-positive rate."""
    members, nonmembers = np.asarray(members, float), np.asarray(nonmembers, float)
    if len(members) == 0 or len(nonmembers) == 0:
        raise ValueError("membership AUC needs at least one member and one non-member")
    y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    scores = np.r_[members, nonmembers]
    auc = float(roc_auc_score(y, scores))
    false_pos, true_pos, _ = roc_curve(y, scores)
    result: dict[str, float | list[float] | int] = {
        "auc": auc,
        f"tpr_at_{fpr * 100:g}%_fpr": float(true_pos[false_pos <= fpr].max()),
        "members": len(members),
        "nonmembers": len(nonmembers),
    }
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        pick_m = rng.integers(0, len(members), (bootstrap, len(members)))
        pick_n = rng.integers(0, len(nonmembers), (bootstrap, len(nonmembers)))
        resampled = rank_auc(members[pick_m], nonmembers[pick_n])
        result["ci95"] = [float(np.quantile(resampled, 0.025)), float(np.quantile(resampled, 0.975))]
    return result
