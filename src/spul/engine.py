"""Scoring at the answer positions only: batched, length-sorted, never full-sequence logits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from spul.forward import (
    cache_argument,
    last_logits_only,
    position_masks,
    returned_cache,
    takes_logits_to_keep,
)
from spul.models import LoadedModel
from spul.progress import progress_bar
from spul.prompting import Batch, Encoder, Verbalizer, length_sorted_batches
from spul.suffix import SuffixPrompt, suffix_forward, uses_text_cache

OTHER = -1  # predicted answer that is no label word
PrefixFn = Callable[[], "torch.Tensor | PrefixKV | SuffixPrompt"]  # the soft prompt, as embeddings or states


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
    kwargs = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    cache = returned_cache(model(inputs_embeds=embeds, use_cache=True, **kwargs))
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(x, "keys") for x in layers):
        return None
    if any(x.keys is None or x.keys.shape[-2] != prefix.shape[0] for x in layers):
        return None  # a sliding-window layer kept only part of a prompt longer than its window
    return PrefixKV([x.keys for x in layers], [x.values for x in layers], prefix.shape[0])


def shared_prefix(
    lm: LoadedModel, prefix_fn: PrefixFn | None, *, share_prefix: bool = True
) -> torch.Tensor | PrefixKV | None:
    """The soft prompt of `prefix_fn`, as key/value states computed once (when `share_prefix` and the
    model allow) for a whole scoring call, else as embeddings; None without a prompt."""
    if prefix_fn is None:
        return None
    with lm.autocast():
        prefix = prefix_fn()
        if isinstance(prefix, SuffixPrompt) and not share_prefix:
            prefix = replace(prefix, share_text=False)
        if isinstance(prefix, torch.Tensor) and share_prefix:
            prefix = prefix_kv(lm.model, prefix) or prefix
    return prefix


def prompted_forward(
    model: PreTrainedModel,
    batch: Batch,
    prefix: torch.Tensor | PrefixKV | None = None,
    *,
    share_prefix: bool = True,
    logits_to_keep: int = 1,
    **model_kwargs,
):
    """The model's output on a left-padded batch, optionally after a soft prompt (`answer_logits`'s pass).

    The soft prompt goes in front of the padding ([prompt][pad..][tokens]); the padding is masked and the
    position ids skip it, so every text sees the same prompt right before it (sliding-window models get
    explicit masks over position ids). A prompt given as embeddings is turned into shared key/value states
    (`PrefixKV`) when `share_prefix` and the model allow, else concatenated. Only the last
    `logits_to_keep` positions get logits where the model supports it.
    """
    kwargs = dict(model_kwargs)
    if takes_logits_to_keep(model):
        kwargs["logits_to_keep"] = logits_to_keep
    if isinstance(prefix, SuffixPrompt):
        return suffix_forward(model, batch, prefix, **kwargs)[0]
    if isinstance(prefix, torch.Tensor) and share_prefix:
        prefix = prefix_kv(model, prefix) or prefix
    mask = batch.attention_mask
    width = mask.shape[1]
    if isinstance(prefix, PrefixKV):
        mask = torch.cat([mask.new_ones(mask.shape[0], prefix.length), mask], dim=1)
        position_ids = (mask.cumsum(-1) - 1)[:, prefix.length :]
        kwargs[cache_argument(model)] = prefix.expand(model, mask.shape[0])
        masks = position_masks(model, mask, width)
        return model(
            input_ids=batch.input_ids,
            attention_mask=mask if masks is None else masks,
            position_ids=position_ids,
            use_cache=True,
            **kwargs,
        )
    embeds = model.get_input_embeddings()(batch.input_ids)
    masks = None
    if prefix is not None:
        if prefix.dim() == 2:
            prefix = prefix.unsqueeze(0).expand(embeds.shape[0], -1, -1)
        embeds = torch.cat([prefix.to(embeds.dtype), embeds], dim=1)
        mask = torch.cat([mask.new_ones(mask.shape[0], prefix.shape[1]), mask], dim=1)
        masks = position_masks(model, mask, mask.shape[1])
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return model(
        inputs_embeds=embeds,
        attention_mask=mask if masks is None else masks,
        position_ids=position_ids,
        use_cache=False,
        **kwargs,
    )


def answer_logits_pair(
    model: PreTrainedModel, batch: Batch, prefix: torch.Tensor | PrefixKV | SuffixPrompt
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompted answer logits, and the unprompted ones where they came free (a suffix prompt), else None."""
    if not isinstance(prefix, SuffixPrompt):
        return answer_logits(model, batch, prefix), None
    out, text = suffix_forward(model, batch, prefix, **last_logits_only(model))
    plain = None if text is None else text.logits[:, -1:].float()
    return out.logits[:, -1:].float(), plain


def answer_logits(
    model: PreTrainedModel,
    batch: Batch,
    prefix: torch.Tensor | PrefixKV | SuffixPrompt | None = None,
    *,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Logits [B, L, vocab] at the last L positions of a left-padded batch, optionally after a soft prompt
    (see `prompted_forward`)."""
    answer_width = batch.targets.shape[1]
    out = prompted_forward(model, batch, prefix, share_prefix=share_prefix, logits_to_keep=answer_width)
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

    def placed(self, rows: np.ndarray, n: int) -> Scores:
        """These scores (of `rows` of `n` texts, in order) in an `n`-row Scores; the other rows answer
        OTHER with zero log-probabilities and loss (placeholders for rows never scored)."""
        predicted = np.full(n, OTHER, dtype=np.int64)
        logprobs = np.zeros((n, self.logprobs.shape[1]), dtype=np.float64)
        loss = np.zeros(n, dtype=np.float64)
        predicted[rows], logprobs[rows], loss[rows] = self.predicted, self.logprobs, self.loss
        return Scores(predicted, logprobs, loss)


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
    share_prefix: bool = True,
) -> Scores:
    """Score texts: greedy answer as a label word, each label word's log-prob, the true label's loss.

    `share_prefix=False` concatenates the prompt's embeddings to every batch instead of sharing its
    key/value states (the same results; for comparisons and benchmarks)."""
    n, k = len(texts), len(verbalizer)
    predicted = np.full(n, OTHER, dtype=np.int64)
    logprobs = np.zeros((n, k), dtype=np.float64)
    if n == 0:
        return Scores(predicted, logprobs, np.zeros(0))
    prompts = encoder.encode(texts)
    lm.cast_frozen()  # scoring only reads the frozen weights
    # the prompt is the same for every batch: its key/value states are computed once per call
    prefix = shared_prefix(lm, prefix_fn, share_prefix=share_prefix)
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
        logits = answer_logits(lm.model, batch, prefix, share_prefix=False)[:, -1]
    _fill_single(logits, verbalizer, index, predicted, logprobs)


def _fill_single(logits, verbalizer, index, predicted, logprobs) -> None:
    """Label log-probs and the greedy answer (a label word or OTHER) from last-position logits."""
    word_ids = torch.tensor([t[0] for t in verbalizer.token_ids], device=logits.device)
    logprobs[index] = torch.log_softmax(logits, -1)[:, word_ids].double().cpu().numpy()
    top = logits.argmax(-1)
    hit = top.unsqueeze(1) == word_ids.unsqueeze(0)  # [B, K]
    predicted[index] = torch.where(hit.any(1), hit.int().argmax(1), OTHER).cpu().numpy()


@torch.no_grad()
def score_with_and_without(
    lm: LoadedModel,
    encoder: Encoder,
    verbalizer: Verbalizer,
    texts: Sequence[str],
    labels: Sequence[int],
    prefix_fn: PrefixFn,
    *,
    batch_size: int = 32,
    description: str = "scoring",
    show_progress: bool = True,
) -> tuple[Scores, Scores]:
    """(scores with the soft prompt, scores without it). A suffix prompt gets both from one pass over the
    texts (the prompt runs over the text's cached states); otherwise this is two `score` calls."""
    lm.cast_frozen()  # scoring only reads the frozen weights
    prompt = shared_prefix(lm, prefix_fn)
    if not (isinstance(prompt, SuffixPrompt) and verbalizer.single_token and uses_text_cache(lm.model)):
        common = {"batch_size": batch_size, "description": description, "show_progress": show_progress}
        with_prompt = score(lm, encoder, verbalizer, texts, labels, prefix_fn=prefix_fn, **common)
        return with_prompt, score(lm, encoder, verbalizer, texts, labels, **common)
    n, k = len(texts), len(verbalizer)
    out = [(np.full(n, OTHER, dtype=np.int64), np.zeros((n, k), dtype=np.float64)) for _ in range(2)]
    prompts = encoder.encode(texts) if n else []  # (the tokenizer refuses an empty batch)
    with progress_bar(description, total=n, enabled=show_progress) as advance:
        for index in length_sorted_batches([len(p) for p in prompts], batch_size):
            chosen = [prompts[i] for i in index]
            batch = encoder.batch(chosen, [verbalizer.token_ids[0]] * len(chosen), index).to(lm.device)
            with lm.autocast():
                prompted, plain = answer_logits_pair(lm.model, batch, prompt)
            for logits, (predicted, logprobs) in zip((prompted, plain), out, strict=True):
                _fill_single(logits[:, -1], verbalizer, index, predicted, logprobs)
            advance(len(index))
    rows = np.arange(n)
    truth = np.asarray(labels, dtype=np.int64)
    return tuple(Scores(pred, lp, -lp[rows, truth] if n else np.zeros(0)) for pred, lp in out)


def _score_multi(lm, encoder, verbalizer, prompts, index, prefix, predicted, logprobs) -> None:
    # One teacher-forced pass per label word. Greedy decoding produces word k exactly when the argmax
    # matches word k's next token at every one of its positions, so a match needs no extra decoding.
    best_len = np.zeros(len(index), dtype=np.int64)
    for k, word in enumerate(verbalizer.token_ids):
        batch = encoder.batch(prompts, [word] * len(prompts), index).to(lm.device)
        with lm.autocast():
            logits = answer_logits(lm.model, batch, prefix, share_prefix=False)
        logprobs[index, k] = sequence_logprob(logits, batch.targets).double().cpu().numpy()
        match = (logits.argmax(-1) == batch.targets).all(-1).cpu().numpy()
        longer = match & (len(word) > best_len)  # if one word prefixes another, the longer match wins
        predicted[np.asarray(index)[longer]] = k
        best_len[longer] = len(word)
