"""Named SPUL recipes: starting points for `spul unlearn --recipe` and experiment configs."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from spul.errors import SpulError

# Named recipes: overrides of SPUL's defaults (the paper's method settings). "paper": the paper's reference
# (P-tuning p 30 before the text, lr 1e-4, clip 0.3, batch 32, AdamW + cosine, a random generic word, a
# recomputed KL reference, 10 epochs). "fast", `spul unlearn`'s default, the levers measured by
# benchmarks/bench_forgetting.py: a 10-token prompt after the text (read once; the KL reference comes with
# it), balanced batches, the generic-set loss, a check every 5 steps (best weights kept, stops at the target).
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "method": {"forget_loss": "random", "kl_reference": "recompute"},
        "training": {"lr": 1e-4, "max_grad_norm": 0.3, "batch_size": 32, "epochs": 10},
    },
    "fast": {
        "method": {"forget_loss": "set", "prompt_position": "auto", "num_virtual_tokens": 10},
        "training": {
            "lr": 2e-3,
            "max_grad_norm": 1.0,
            "batch_size": 16,
            "epochs": 4,
            "forget_share": 0.5,
            "check_every": 5,
        },
    },
}
DEFAULT_RECIPE = "fast"


def recipe_settings(name: str, overrides: dict[str, Any] | None = None, seed: int = 0):
    """A recipe's method options and TrainConfig, with `overrides` (method options or training fields)."""
    from spul.training import TrainConfig

    if name not in RECIPES:
        raise SpulError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    method = dict(RECIPES[name]["method"])
    training = dict(RECIPES[name]["training"]) | {"seed": seed}
    train_fields = {f.name for f in fields(TrainConfig)}
    for key, value in (overrides or {}).items():
        (training if key in train_fields else method)[key] = value
    return method, TrainConfig(**training)
