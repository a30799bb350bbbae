"""spul: machine unlearning for LLM classifiers with soft prompts."""

__version__ = "0.1.0"


def load_unlearned(*args, **kwargs):
    """Load a saved unlearning prompt over its base model (see `spul.unlearned.load_unlearned`)."""
    from spul.unlearned import load_unlearned as _load

    return _load(*args, **kwargs)
