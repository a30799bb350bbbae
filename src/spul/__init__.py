"""spul: machine unlearning for LLM classifiers with soft prompts."""

from spul.version import __version__

__all__ = ["__version__", "load_unlearned"]


def load_unlearned(*args, **kwargs):
    """Load a saved unlearning prompt over its base model (see `spul.unlearned.load_unlearned`)."""
    from spul.unlearned import load_unlearned as _load

    return _load(*args, **kwargs)
