"""Training methods behind one interface and one registry (importing this package registers them)."""

from spul.methods import finetune, ga, ga_gd, ga_kl, icul, npo, retrain, rl, spul  # noqa: F401  (registration)
from spul.methods.base import (
    ARTIFACT_KINDS,
    METHODS,
    Method,
    TrainBatch,
    TrainItem,
    get_method,
    register,
)

__all__ = ["ARTIFACT_KINDS", "METHODS", "Method", "TrainBatch", "TrainItem", "get_method", "register"]
