"""Loss pieces shared by methods: per-example answer NLL and KL to the frozen model."""

from __future__ import annotations

import torch

from spul.engine import sequence_logprob


def answer_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log P(answer) per row (sum over the answer's tokens; targets right-aligned, -100 padded)."""
    return -sequence_logprob(logits, targets)


def answer_kl(logits: torch.Tensor, ref_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(p_logits || p_ref) over the full vocabulary, summed over each row's answer positions."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    per_position = (logp.exp() * (logp - logq)).sum(-1)
    return (per_position * (targets != -100)).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the selected rows, or 0 (keeping the graph) when none is selected."""
    if mask.any():
        return values[mask].mean()
    return values.sum() * 0.0
