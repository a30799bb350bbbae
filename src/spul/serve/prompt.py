"""The served prompt: an `Unlearned` predictor, what the service reports about it, and what it may serve."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from spul.artifacts import artifact_fingerprint, read_manifest
from spul.errors import SpulError


class Predictor(Protocol):
    """What the service needs from a model: `Unlearned` is one."""

    folder: Path
    manifest: dict[str, Any]

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """Label and label probabilities of each text, with the unlearning prompt applied."""
        ...


class Refused(SpulError):
    """A prompt the service will not serve (a 4xx; the prompt in use keeps serving)."""


@dataclass
class ServedPrompt:
    """A loaded predictor and its public description (id, fingerprint, covered deletion requests).

    `info` is what responses show: no server path. `folder` (the resolved folder) stays inside. `check`
    is the manifest's recorded training check per split (for the operator's metrics, not for responses).
    """

    predictor: Predictor
    info: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    check: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def wrap(cls, predictor: Predictor, prompt_id: str | None = None) -> ServedPrompt:
        """Describe a loaded predictor from its folder and manifest."""
        manifest = predictor.manifest
        base = manifest.get("base_model") or {}
        folder = Path(predictor.folder)
        info = {
            "id": prompt_id or folder.name,
            "fingerprint": artifact_fingerprint(folder),
            "created": manifest.get("created"),
            "method": manifest.get("method"),
            "kind": manifest.get("kind"),
            "base_model_fingerprint": base.get("fingerprint"),
            "requests": list(manifest.get("requests", [])),
        }
        check = manifest.get("metrics") if isinstance(manifest.get("metrics"), dict) else {}
        return cls(predictor, info, folder, {k: v for k, v in check.items() if isinstance(v, dict)})

    def predict(self, texts: list[str], batch_size: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Predictions for `texts` and the description of the prompt that made them."""
        return self.predictor.predict(texts, batch_size=batch_size), self.info


Loader = Callable[[str | None, "ServedPrompt | None"], ServedPrompt]


def is_unlearning_artifact(manifest: dict[str, Any]) -> bool:
    """True when the artifact applies an unlearning intervention (a known method, not a plain fine-tune)."""
    from spul.methods import ARTIFACT_KINDS, METHODS

    method = manifest.get("method")
    return method in METHODS and method != "finetune" and manifest.get("kind") in ARTIFACT_KINDS


def is_trained_artifact(manifest: dict[str, Any]) -> bool:
    """True when the manifest has what training writes (hyperparameters, the forget-set hash, metrics)."""
    data = manifest.get("data")
    return (
        isinstance(manifest.get("hyperparameters"), dict)
        and isinstance(data, dict)
        and isinstance(data.get("forget_sha256"), str)
        and isinstance(manifest.get("metrics"), dict)
    )


def check_manifest(manifest: dict[str, Any], where: str) -> None:
    """Refuse what the service may not serve, by the CLI's rules; `where` names the artifact in errors."""
    from spul.prompting import Template

    if not is_unlearning_artifact(manifest):
        raise Refused(
            f"{where}: method {manifest.get('method')!r} (kind {manifest.get('kind')!r}) applies no "
            "unlearning intervention; serve an unlearning artifact"
        )
    base = manifest.get("base_model")
    if not isinstance(base, dict) or not isinstance(base.get("fingerprint"), str):
        raise Refused(f"{where}: the manifest names no base model fingerprint")
    try:
        Template(**manifest["template"])
    except (KeyError, TypeError) as err:
        raise Refused(f"{where}: the manifest has no valid template") from err
    except SpulError as err:
        raise Refused(f"{where}: {err}") from err
    words, generic = manifest.get("label_words"), manifest.get("generic_words", [])
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise Refused(f"{where}: the manifest's label_words is not a list of words")
    folded = [w.strip().lower() for w in words]
    if len(folded) < 2 or len(set(folded)) != len(folded) or not all(folded):
        raise Refused(f"{where}: label words must be at least two distinct words, got {words}")
    if not isinstance(generic, list) or set(folded) & {str(g).strip().lower() for g in generic}:
        raise Refused(f"{where}: generic words must be a list disjoint from the label words")
    requests = manifest.get("requests", [])
    if not isinstance(requests, list) or not all(isinstance(r, str) for r in requests):
        raise Refused(f"{where}: the manifest's requests is not a list of request ids")
    if requests and not is_trained_artifact(manifest):
        raise Refused(f"{where}: claims deletion requests but is not a trained spul artifact")


def resolve_prompt(path: str | Path, roots: Sequence[Path]) -> tuple[Path, str]:
    """The folder `path` names (absolute, or relative to a root), resolved inside a root, and its id.

    Symlinks and `..` are resolved first, so neither the folder nor any file in it can lie outside
    the root; the id is the folder relative to its root (what responses show instead of a path).
    """
    try:
        given = Path(path)
        candidates = [given] if given.is_absolute() else [root / given for root in roots]
        for candidate in candidates:
            folder = candidate.resolve()
            root = next((r for r in roots if folder.is_relative_to(r)), None)
            if root is None or not folder.is_dir():
                continue
            for file in folder.rglob("*"):
                if not file.resolve().is_relative_to(root):
                    raise Refused(f"{folder.relative_to(root)}: {file.name} links outside the prompt root")
            return folder, folder.relative_to(root).as_posix() or "."
    except (OSError, ValueError, RuntimeError):  # NUL bytes, loops, permissions
        pass
    raise Refused(f"{str(path)[:200]!r} is not a prompt folder under the prompt roots given at start")


def prompt_loader(
    prompt: str | Path,
    *,
    roots: Sequence[str | Path] | None = None,
    model: str | None = None,
    adapter: str | None = None,
    device: str | None = None,
    precision: str = "auto",
) -> Loader:
    """A loader for the service: `load(path or None for the prompt in use, current) -> ServedPrompt`.

    Only folders under `roots` (default: the startup prompt's parent) holding an unlearning artifact
    over the same base model are loaded (`Refused` otherwise, before any weights are read). A prompt
    trained on the same weights as the current one reuses the loaded model, so a reload reads only the
    prompt; any other artifact loads its base model afresh (its fingerprint is checked on load).
    """
    from spul.unlearned import Unlearned, load_unlearned

    startup = Path(prompt)
    resolved_roots = [Path(r).resolve() for r in (roots or [startup.resolve().parent])]

    def load(path: str | None, current: ServedPrompt | None) -> ServedPrompt:
        if path:
            folder, prompt_id = resolve_prompt(path, resolved_roots)
        elif current is not None and current.folder is not None:
            folder, prompt_id = current.folder, current.info["id"]  # the prompt in use, re-read
        else:
            folder, prompt_id = resolve_prompt(startup.resolve(), resolved_roots)
        manifest = read_manifest(folder)
        check_manifest(manifest, prompt_id)
        old = current.predictor if current is not None else None
        if current is not None:
            served_base = current.info.get("base_model_fingerprint")
            if manifest["base_model"]["fingerprint"] != served_base:
                raise Refused(f"{prompt_id}: trained over another base model than the one being served")
        if isinstance(old, Unlearned) and old.shares_model_with(manifest):
            return ServedPrompt.wrap(old.with_artifact(folder, manifest), prompt_id)
        unlearned = load_unlearned(folder, model=model, adapter=adapter, device=device, precision=precision)
        return ServedPrompt.wrap(unlearned, prompt_id)

    return load
