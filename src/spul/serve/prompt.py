"""The served prompt: an `Unlearned` predictor plus what the service reports about it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spul.artifacts import artifact_fingerprint, read_manifest


class Predictor(Protocol):
    """What the service needs from a model: `Unlearned` is one."""

    folder: Path
    manifest: dict[str, Any]

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """Label and label probabilities of each text, with the unlearning prompt applied."""
        ...


@dataclass
class ServedPrompt:
    """A loaded predictor and its public description (path, fingerprint, covered deletion requests)."""

    predictor: Predictor
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def wrap(cls, predictor: Predictor) -> ServedPrompt:
        """Describe a loaded predictor from its folder and manifest."""
        manifest = predictor.manifest
        base = manifest.get("base_model", {})
        info = {
            "path": str(predictor.folder),
            "fingerprint": artifact_fingerprint(predictor.folder),
            "created": manifest.get("created"),
            "method": manifest.get("method"),
            "base_model": base.get("spec"),
            "requests": list(manifest.get("requests", [])),
        }
        return cls(predictor, info)

    def predict(self, texts: list[str], batch_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Predictions for `texts` and the description of the prompt that made them."""
        return self.predictor.predict(texts, batch_size=batch_size), self.info


Loader = Callable[[str | None, "ServedPrompt | None"], ServedPrompt]


def prompt_loader(
    prompt: str | Path,
    *,
    model: str | None = None,
    adapter: str | None = None,
    device: str | None = None,
    precision: str = "auto",
) -> Loader:
    """A loader for the service: `load(path or None for the current path, current) -> ServedPrompt`.

    A prompt trained on the same weights (same base-model fingerprint) as the current one reuses the
    loaded model, so a reload reads only the prompt; any other prompt loads its base model afresh.
    """
    from spul.pipeline import Unlearned, load_unlearned

    default = Path(prompt)

    def load(path: str | None, current: ServedPrompt | None) -> ServedPrompt:
        folder = Path(path) if path else default
        old = current.predictor if current is not None else None
        if isinstance(old, Unlearned) and old.manifest.get("kind") == "prompt":
            manifest = read_manifest(folder)
            loaded = old.manifest["base_model"]["fingerprint"]  # checked against these weights on load
            if manifest.get("kind") == "prompt" and manifest["base_model"].get("fingerprint") == loaded:
                return ServedPrompt.wrap(Unlearned(old.lm, folder, manifest, base_adapter=old.base_adapter))
        unlearned = load_unlearned(folder, model=model, adapter=adapter, device=device, precision=precision)
        return ServedPrompt.wrap(unlearned)

    return load
