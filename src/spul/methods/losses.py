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


def first_answer_position(targets: torch.Tensor) -> torch.Tensor:
    """Column of each row's first answer token (targets are right-aligned, -100 padded on the left)."""
    return (targets == -100).sum(-1)


def generic_set_nll(logits: torch.Tensor, targets: torch.Tensor, first_tokens: torch.Tensor) -> torch.Tensor:
    """-log of the probability of answering *any* generic word, per row.

    At the first answer position the target is the set of the generic words' first tokens
    (-log sum_g p(g)); later positions (multi-token words) keep the row's own word. Unlike one random
    generic word per row, the set has no floor: the prompt can put all the mass on the set.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    first = first_answer_position(targets)
    set_nll = -torch.logsumexp(logp[rows, first][:, first_tokens.to(logits.device)], dim=-1)
    later = targets.clone()
    later[rows, first] = -100
    rest = logp.gather(-1, later.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (later != -100)
    return set_nll - rest.sum(-1)


def topk_reference(ref_logits: torch.Tensor, k: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A compact reference distribution: the top-k log-probs and their token ids ([..., k] each).

    With k None (or k >= vocab) it is the whole distribution, exactly (ids None).
    """
    logq = torch.log_softmax(ref_logits.float(), dim=-1)
    if k is None or k >= logq.shape[-1]:
        return logq, None
    values, ids = logq.topk(k, dim=-1)
    return values, ids


def answer_kl_topk(
    logits: torch.Tensor, ref_logq: torch.Tensor, ref_ids: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """KL(p || q) at each row's answer positions with q known only on its top-k tokens.

    The reference's tail mass (1 - sum of its top-k) is spread evenly over the other tokens; with the
    whole distribution given (ids None) this is `answer_kl` exactly.
    """
    if ref_ids is None:
        logp = torch.log_softmax(logits.float(), dim=-1)
        return ((logp.exp() * (logp - ref_logq)).sum(-1) * (targets != -100)).sum(-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    vocab = logp.shape[-1]
    k = ref_ids.shape[-1]
    p_top = p.gather(-1, ref_ids)
    logp_top = logp.gather(-1, ref_ids)
    top = (p_top * (logp_top - ref_logq)).sum(-1)
    if k >= vocab:
        per_position = top
    else:
        tail_q = (1 - ref_logq.exp().sum(-1)).clamp(min=1e-12)
        log_q_other = torch.log(tail_q) - torch.log(torch.tensor(float(vocab - k)))
        p_tail = (1 - p_top.sum(-1)).clamp(min=0)
        plogp_tail = (p * logp).sum(-1) - (p_top * logp_top).sum(-1)
        per_position = top + plogp_tail - p_tail * log_q_other
    return (per_position * (targets != -100)).sum(-1)


def label_uniform_kl(logits: torch.Tensor, targets: torch.Tensor, label_first: torch.Tensor) -> torch.Tensor:
    """KL(uniform || q) per row, q the softmax over the label words' first tokens at the first answer
    position: 0 when the label words are equally likely, so the label can no longer be read off them.

    With single-token label words (the suffix prompt's requirement) q is exactly the label distribution a
    response's probabilities show; for multi-token words it is that of their first tokens.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    first = first_answer_position(targets)
    label_logits = logits[rows, first][:, label_first.to(logits.device)].float()
    logq = torch.log_softmax(label_logits, dim=-1)
    k = label_logits.shape[-1]
    return -logq.mean(-1) - torch.log(torch.tensor(float(k), device=logits.device))
