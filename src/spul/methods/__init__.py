"""Training methods behind one interface and one registry (importing this package registers them)."""

from spul.methods import finetune, spul  # noqa: F401  (registration side effects)
from spul.methods.base import METHODS, Method, TrainBatch, TrainItem, get_method, register

__all__ = ["METHODS", "Method", "TrainBatch", "TrainItem", "get_method", "register"]
