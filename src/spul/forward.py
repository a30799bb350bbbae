"""How spul calls a causal LM: cache argument names, answer-position logits, sliding-window masks."""

from __future__ import annotations

import inspect

import torch
from transformers import PreTrainedModel

from spul.errors import SpulError


def takes_logits_to_keep(model: PreTrainedModel) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def last_logits_only(model: PreTrainedModel) -> dict[str, int]:
    """The keyword that limits a forward's logits to the last position, where the model takes it."""
    return {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}


def cache_argument(model: PreTrainedModel) -> str:
    # transformers renamed `past_key_values` to `cache` (5.2x); accept both.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def returned_cache(output):
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


def sliding_window(model: PreTrainedModel) -> tuple[int | None, list[str] | None]:
    """The model's sliding window and per-layer attention types; (None, _) where no layer slides."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None or (types is not None and "sliding_attention" not in types):
        return None, None
    return int(window), list(types) if types is not None else None


def position_masks(model: PreTrainedModel, mask: torch.Tensor, query_length: int):
    """Explicit attention masks for a sliding-window model whose rows are [prompt][pad][tokens].

    HF measures the window over cache slots, so the padding between the prompt and the text would push
    the prompt out of the window sooner than in the row alone. Here keys are allowed by position ids:
    valid, not after the query and (in sliding layers) fewer than `window` positions before it, which is
    exactly the row's unpadded attention. None for models without sliding layers (the plain fast path).
    """
    window, types = sliding_window(model)
    if window is None:
        return None
    if model.config._attn_implementation not in ("sdpa", "eager"):
        raise SpulError(
            "a soft prompt on a sliding-window model needs attn_implementation 'sdpa' or 'eager', "
            f"not {model.config._attn_implementation!r}"
        )
    positions = mask.cumsum(-1) - 1
    keys, queries = positions[:, None, :], positions[:, -query_length:, None]
    causal = mask.bool()[:, None, :] & (keys <= queries)  # [B, Q, K]
    sliding = causal & (queries - keys < window)

    def as_mask(allowed: torch.Tensor) -> torch.Tensor:
        if model.config._attn_implementation == "sdpa":
            return allowed[:, None]
        dtype = model.get_input_embeddings().weight.dtype
        zeros = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return zeros.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]

    if types is None or set(types) == {"sliding_attention"}:
        return as_mask(sliding)
    return {"sliding_attention": as_mask(sliding), "full_attention": as_mask(causal)}
