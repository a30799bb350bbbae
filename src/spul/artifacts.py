"""Saved artifacts: a peft folder plus `spul.json` (what it is, what made it, how well it did)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

import spul
from spul.errors import SpulError
from spul.io import write_folder_atomic, write_json_atomic

MANIFEST = "spul.json"
FORMAT = "spul/1"


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """A cheap hash of a model's weights: a strided sample of every tensor (a merged LoRA changes it)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].float().cpu()
        digest.update(name.encode())
        digest.update(sample.numpy().round(4).tobytes())
    return digest.hexdigest()[:32]


def trainable_parameters(module: torch.nn.Module) -> int:
    """How many parameters are being trained."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def save_artifact(folder: Path, save_weights, manifest: dict[str, Any]) -> Path:
    """Write weights (via `save_weights(tmp_folder)`) and the manifest as one atomic folder swap."""
    manifest = {
        "format": FORMAT,
        "spul_version": spul.__version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    } | manifest

    def fill(tmp: Path) -> None:
        save_weights(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)

    write_folder_atomic(Path(folder), fill)
    return Path(folder)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read `spul.json` of a saved artifact, with a clear error when it is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise SpulError(f"{folder} is not a spul artifact (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SpulError(f"{path}: invalid JSON ({err})") from err
    if manifest.get("format") != FORMAT:
        raise SpulError(f"{path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def check_base_model(manifest: dict[str, Any], fingerprint: str, folder: str | Path) -> None:
    """Refuse to apply a prompt to a model other than the one it was trained on."""
    expected = manifest["base_model"]["fingerprint"]
    if expected != fingerprint:
        base = manifest["base_model"]
        raise SpulError(
            f"{folder} was trained on model {base['spec']!r} (adapter {base.get('adapter')!r}), "
            "but the model loaded now has different weights; pass the same --model and --adapter"
        )


def artifact_fingerprint(folder: str | Path) -> str:
    """sha256 over a saved artifact's files (names and bytes), short: which prompt exactly is in use."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:32]
