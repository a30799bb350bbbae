"""`spul serve`: an HTTP classification service with the unlearning prompt always applied."""

from spul.serve.app import ServeConfig, create_app
from spul.serve.prompt import ServedPrompt, prompt_loader

__all__ = ["ServeConfig", "ServedPrompt", "create_app", "prompt_loader"]
