"""Training methods behind one interface and two registries (importing this package registers them):
METHODS (name -> method class, each with its options' config dataclass) and ARTIFACT_KINDS (kind -> how
its saved artifacts are loaded)."""

from spul.methods import finetune, ga, ga_gd, ga_kl, guard, icul, npo, retrain, rl, spul  # noqa: F401  (registration)
from spul.methods.base import (
    METHODS,
    Method,
    TrainBatch,
    TrainItem,
    get_method,
    register,
    resolve_options,
)
from spul.methods.config import MethodConfig, Option, option, parse_method_args
from spul.methods.docs import describe, method_table, options
from spul.methods.kinds import ARTIFACT_KINDS, ArtifactKind, Attached, get_kind, register_kind

__all__ = [
    "ARTIFACT_KINDS",
    "METHODS",
    "ArtifactKind",
    "Attached",
    "Method",
    "MethodConfig",
    "Option",
    "TrainBatch",
    "TrainItem",
    "describe",
    "get_kind",
    "get_method",
    "method_table",
    "option",
    "options",
    "parse_method_args",
    "register",
    "register_kind",
    "resolve_options",
]
