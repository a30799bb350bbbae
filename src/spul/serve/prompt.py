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


def prompt_loader(prompt: str | Path, **options: Any) -> Loader:
    """A loader for the service: `load(path or None for the current path, current) -> ServedPrompt`.

    `options` are `load_unlearned`'s (model, adapter, device, precision). An artifact that goes over the
    loaded model as it is (`Unlearned.shares_model_with`: a prompt or context trained on the same weights)
    reuses that model, so a reload reads only the artifact; any other loads its model afresh.
    """
    from spul.unlearned import Unlearned, load_unlearned

    default = Path(prompt)

    def load(path: str | None, current: ServedPrompt | None) -> ServedPrompt:
        folder = Path(path) if path else default
        old = current.predictor if current is not None else None
        if isinstance(old, Unlearned):
            manifest = read_manifest(folder)
            if old.shares_model_with(manifest):
                return ServedPrompt.wrap(old.with_artifact(folder, manifest))
        return ServedPrompt.wrap(load_unlearned(folder, **options))

    return load
