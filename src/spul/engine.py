"""Scoring at the answer positions only: batched, length-sorted, never full-sequence logits."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from spul.models import LoadedModel
from spul.progress import progress_bar
from spul.prompting import Batch, Encoder, Verbalizer, length_sorted_batches

OTHER = -1  # predicted answer that is no label word
PrefixFn = Callable[[], "torch.Tensor | PrefixKV"]  # the soft prompt: embeddings [p, hidden] or its states


def _takes_logits_to_keep(model: PreTrainedModel) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def _cache_argument(model: PreTrainedModel) -> str:
    # transformers renamed `past_key_values` to `cache` (5.2x); accept both.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output):
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


@dataclass
class PrefixKV:
    """The soft prompt's key/value states in every layer, computed once and shared by a whole batch.

    Attention is causal, so the prompt's states do not depend on the text after it: one forward of the
    prompt alone replaces p extra positions in every row. Gradients flow back into the prompt.
    """

    keys: list[torch.Tensor]  # per layer [1, kv_heads, p, head_dim]
    values: list[torch.Tensor]
    length: int

    def expand(self, model: PreTrainedModel, batch_size: int) -> DynamicCache:
        """A fresh cache holding the prompt states for `batch_size` rows (views, no copies)."""
        cache = DynamicCache(config=model.config)
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.update(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1), layer)
        return cache


def prefix_kv(model: PreTrainedModel, prefix: torch.Tensor) -> PrefixKV | None:
    """Run the prompt alone once; None where the cache cannot be shared (then the prompt is concatenated)."""
    embeds = prefix.unsqueeze(0).to(model.get_input_embeddings().weight.dtype)
    kwargs = {"logits_to_keep": 1} if _takes_logits_to_keep(model) else {}
    cache = _returned_cache(model(inputs_embeds=embeds, use_cache=True, **kwargs))
    layers = getattr(cache, "layers", None)
    if not SHARE_PREFIX or layers is None or not all(hasattr(x, "keys") for x in layers):
        return None
    return PrefixKV([x.keys for x in layers], [x.values for x in layers], prefix.shape[0])


SHARE_PREFIX = True  # tests switch it off to compare with the plain concatenation


def answer_logits(
    model: PreTrainedModel, batch: Batch, prefix: torch.Tensor | PrefixKV | None = None
) -> torch.Tensor:
    """Logits [B, L, vocab] at the last L positions of a left-padded batch, optionally after a soft prompt.

    The soft prompt goes in front of the padding ([prompt][pad..][tokens]); the padding is masked and the
    position ids skip it, so every text sees the same prompt right before it. A prompt given as embeddings
    is turned into shared key/value states (`PrefixKV`) when the model allows, else concatenated.
    """
    answer_width = batch.targets.shape[1]
    kwargs = {"logits_to_keep": answer_width} if _takes_logits_to_keep(model) else {}
    if isinstance(prefix, torch.Tensor) and SHARE_PREFIX:
        prefix = prefix_kv(model, prefix) or prefix
    mask = batch.attention_mask
    if isinstance(prefix, PrefixKV):
        mask = torch.cat([mask.new_ones(mask.shape[0], prefix.length), mask], dim=1)
        position_ids = (mask.cumsum(-1) - 1)[:, prefix.length :]
        kwargs[_cache_argument(model)] = prefix.expand(model, mask.shape[0])
        out = model(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -answer_width:].float()
    embeds = model.get_input_embeddings()(batch.input_ids)
    if prefix is not None:
        if prefix.dim() == 2:
            prefix = prefix.unsqueeze(0).expand(embeds.shape[0], -1, -1)
        embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
        mask = torch.cat([mask.new_ones(mask.shape[0], prefix.shape[1]), mask], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False, **kwargs
    )
    return out.logits[:, -answer_width:].float()


def sequence_logprob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of the (right-aligned, -100 padded) target tokens, per row."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    valid = targets != -100
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * valid).sum(-1)


@dataclass
class Scores:
    """Per-example results of scoring: predicted label index (or OTHER), label log-probs, true-label loss."""

    predicted: np.ndarray  # [N] int
    logprobs: np.ndarray  # [N, K] log P(label word k | prompt)
    loss: np.ndarray  # [N] -log P(true label word | prompt)


@torch.no_grad()
def score(
    lm: LoadedModel,
    encoder: Encoder,
    verbalizer: Verbalizer,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    batch_size: int = 32,
    prefix_fn: PrefixFn | None = None,
    description: str = "scoring",
    show_progress: bool = True,
) -> Scores:
    """Score texts: greedy answer as a label word, each label word's log-prob, the true label's loss."""
    n, k = len(texts), len(verbalizer)
    predicted = np.full(n, OTHER, dtype=np.int64)
    logprobs = np.zeros((n, k), dtype=np.float64)
    if n == 0:
        return Scores(predicted, logprobs, np.zeros(0))
    prompts = encoder.encode(texts)
    prefix = None
    if prefix_fn is not None:
        with lm.autocast():
            prefix = prefix_fn()
            if isinstance(prefix, torch.Tensor) and SHARE_PREFIX:
                # the prompt is the same for every batch: its key/value states are computed once per call
                prefix = prefix_kv(lm.model, prefix) or prefix
    batches = length_sorted_batches([len(p) for p in prompts], batch_size)
    with progress_bar(description, total=n, enabled=show_progress) as advance:
        for index in batches:
            chosen = [prompts[i] for i in index]
            if verbalizer.single_token:
                _score_single(lm, encoder, verbalizer, chosen, index, prefix, predicted, logprobs)
            else:
                _score_multi(lm, encoder, verbalizer, chosen, index, prefix, predicted, logprobs)
            advance(len(index))
    loss = -logprobs[np.arange(n), np.asarray(labels, dtype=np.int64)]
    return Scores(predicted, logprobs, loss)


def _score_single(lm, encoder, verbalizer, prompts, index, prefix, predicted, logprobs) -> None:
    batch = encoder.batch(prompts, [verbalizer.token_ids[0]] * len(prompts), index).to(lm.device)
    with lm.autocast():
        logits = answer_logits(lm.model, batch, prefix)[:, -1]
    word_ids = torch.tensor([t[0] for t in verbalizer.token_ids], device=logits.device)
    logprobs[index] = torch.log_softmax(logits, -1)[:, word_ids].double().cpu().numpy()
    top = logits.argmax(-1)
    hit = top.unsqueeze(1) == word_ids.unsqueeze(0)  # [B, K]
    predicted[index] = torch.where(hit.any(1), hit.int().argmax(1), OTHER).cpu().numpy()


def _score_multi(lm, encoder, verbalizer, prompts, index, prefix, predicted, logprobs) -> None:
    # One teacher-forced pass per label word. Greedy decoding produces word k exactly when the argmax
    # matches word k's next token at every one of its positions, so a match needs no extra decoding.
    best_len = np.zeros(len(index), dtype=np.int64)
    for k, word in enumerate(verbalizer.token_ids):
        batch = encoder.batch(prompts, [word] * len(prompts), index).to(lm.device)
        with lm.autocast():
            logits = answer_logits(lm.model, batch, prefix)
        logprobs[index, k] = sequence_logprob(logits, batch.targets).double().cpu().numpy()
        match = (logits.argmax(-1) == batch.targets).all(-1).cpu().numpy()
        longer = match & (len(word) > best_len)  # if one word prefixes another, the longer match wins
        predicted[np.asarray(index)[longer]] = k
        best_len[longer] = len(word)
