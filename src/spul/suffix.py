"""A soft prompt after the template, right before the answer: the text is read once, without gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel

from spul.errors import SpulError
from spul.forward import cache_argument, position_masks, returned_cache, sliding_window
from spul.prompting import Batch, Encoder


@dataclass
class SuffixPrompt:
    """A soft prompt placed after the query, before the template's last `tail` tokens (its answer cue,
    e.g. "### Sentiment:"), so the model still answers where it learned to (`prompt_position` "suffix").

    Attention is causal, so the text's states do not depend on a prompt after it: the text is read once
    without gradients (that pass also gives the unprompted answer for free) and only the p prompt
    positions and the cue are run with gradients. Needs one-token answers (the answer follows the cue).
    """

    embeddings: torch.Tensor  # [p, hidden]
    share_text: bool = True  # False: insert it into the text in one pass (the reference way)
    tail: int = 0  # template tokens after the prompt (the answer cue)

    @property
    def length(self) -> int:
        """The number of virtual tokens."""
        return self.embeddings.shape[0]


def _check_suffix_batch(batch: Batch) -> None:
    if batch.targets.shape[1] != 1:
        raise SpulError(
            "a suffix soft prompt needs one-token answer words (the prompt sits right before the answer); "
            "use prompt_position prefix for multi-token label or generic words"
        )


def text_states(model: PreTrainedModel, batch: Batch, **kwargs):
    """The model's output on a left-padded batch with its key/value cache, no gradient (a suffix's text)."""
    mask = batch.attention_mask
    with torch.no_grad():
        return model(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
            **kwargs,
        )


def row_states(output) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per-layer (keys, values) [B, kv_heads, T, head_dim] of a `text_states` output; None if unreadable."""
    layers = getattr(returned_cache(output), "layers", None)
    if layers is None or not all(getattr(x, "keys", None) is not None for x in layers):
        return None
    return [(x.keys, x.values) for x in layers]


def cache_of_rows(model: PreTrainedModel, rows: list[list[tuple[torch.Tensor, torch.Tensor]]], width: int):
    """A cache of left-padded rows from each row's own per-layer (keys, values) [kv_heads, T_i, head_dim]."""
    cache = DynamicCache(config=model.config)
    for layer in range(len(rows[0])):
        k0 = rows[0][layer][0]
        keys = k0.new_zeros(len(rows), k0.shape[0], width, k0.shape[-1])
        values = keys.clone()
        for i, row in enumerate(rows):
            k, v = row[layer]
            keys[i, :, width - k.shape[1] :] = k
            values[i, :, width - v.shape[1] :] = v
        cache.update(keys, values, layer)
    return cache


def _prompt_and_tail(model: PreTrainedModel, suffix: SuffixPrompt, tail_ids: torch.Tensor) -> torch.Tensor:
    """[B, p + tail, hidden]: the prompt embeddings, then those of the template's last tokens."""
    embed = model.get_input_embeddings()
    prompt = suffix.embeddings.to(embed.weight.dtype).unsqueeze(0).expand(len(tail_ids), -1, -1)
    return torch.cat([prompt, embed(tail_ids)], dim=1)


def suffix_over(
    model: PreTrainedModel, mask: torch.Tensor, cache, suffix: SuffixPrompt, tail_ids: torch.Tensor, **kwargs
):
    """The soft prompt's p positions and the `tail_ids` [B, tail] after them, over the cached states of
    the left-padded text rows of `mask` (the text without its tail)."""
    embeds = _prompt_and_tail(model, suffix, tail_ids)
    rows, width = embeds.shape[:2]
    positions = mask.sum(-1, keepdim=True) + torch.arange(width, device=mask.device)
    return model(
        inputs_embeds=embeds,
        attention_mask=torch.cat([mask, mask.new_ones(rows, width)], dim=1),
        position_ids=positions,
        use_cache=True,
        **{cache_argument(model): cache},
        **kwargs,
    )


def suffix_forward(model: PreTrainedModel, batch: Batch, suffix: SuffixPrompt, **kwargs):
    """(prompted output, unprompted output or None) of a left-padded batch with a suffix soft prompt.

    Left-padded rows all end with the template's last `suffix.tail` tokens, so the prompt goes in at one
    column for every row. With `suffix.share_text` (and a model without sliding-window layers) the text
    is run once with no gradient, its key/value cache kept, and the prompt's p positions plus the tail run
    over that cache: the text costs one inference pass and its answer without the prompt comes with it.
    Otherwise (or for sliding-window models, whose cache may keep only the window) the prompt is inserted
    and the row run in one pass with masks over position ids; then no unprompted output is returned.
    """
    _check_suffix_batch(batch)
    window, _ = sliding_window(model)
    cut = batch.input_ids.shape[1] - suffix.tail
    if suffix.share_text and window is None:
        # the whole text once (its last position is the unprompted answer), its cache cut before the tail
        text = text_states(model, batch, **kwargs)
        cache = returned_cache(text)
        if suffix.tail:
            cache.crop(-suffix.tail)
        mask, tail_ids = batch.attention_mask[:, :cut], batch.input_ids[:, cut:]
        return suffix_over(model, mask, cache, suffix, tail_ids, **kwargs), text
    return _inserted_forward(model, batch, suffix, **kwargs), None


def _inserted_forward(model: PreTrainedModel, batch: Batch, suffix: SuffixPrompt, **kwargs):
    """One pass over each row with the prompt inserted before its tail (masks over position ids)."""
    cut = batch.input_ids.shape[1] - suffix.tail
    mask = batch.attention_mask[:, :cut]
    text = model.get_input_embeddings()(batch.input_ids[:, :cut])
    embeds = torch.cat([text, _prompt_and_tail(model, suffix, batch.input_ids[:, cut:])], 1)
    full_mask = torch.cat([mask, mask.new_ones(len(mask), embeds.shape[1] - cut)], dim=1)
    masks = position_masks(model, full_mask, full_mask.shape[1])
    return model(
        inputs_embeds=embeds,
        attention_mask=full_mask if masks is None else masks,
        position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=False,
        **kwargs,
    )


def uses_text_cache(model: PreTrainedModel) -> bool:
    """True where a suffix prompt runs over cached text states (no sliding-window layers)."""
    return sliding_window(model)[0] is None


def answer_cue_length(encoder: Encoder) -> int:
    """How many of the template's last tokens (its last line, the answer cue such as "### Sentiment:")
    follow a suffix prompt; 0 (the prompt right before the answer) when that line is not its own tokens."""
    after = encoder.template.text.split("{text}")[1]
    cue = after.rsplit("\n", 1)[1] if "\n" in after else ""
    if not cue.strip():
        return 0
    ids = encoder.tokenizer(cue, add_special_tokens=False).input_ids
    return len(ids) if encoder.encode([""])[0][-len(ids) :] == ids else 0


def aligned_logits(model: PreTrainedModel, batch: Batch, suffix: SuffixPrompt) -> torch.Tensor:
    """Logits [B, T, vocab] at every input position of a left-padded batch whose rows end with the
    template's tail, the suffix prompt inserted before it: position i predicts input token i + 1 as it
    would without the prompt (the prompt's own positions are dropped but its last, which predicts the
    first tail token). For statistics over every token (the membership audit)."""
    cut = batch.input_ids.shape[1] - suffix.tail
    logits = _inserted_forward(model, batch, suffix).logits
    return torch.cat([logits[:, : cut - 1], logits[:, cut + suffix.length - 1 :]], dim=1).float()
