"""spul: machine unlearning for LLM classifiers with soft prompts."""

__version__ = "0.1.0"
