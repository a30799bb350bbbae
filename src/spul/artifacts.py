"""Saved artifacts: a peft folder plus `spul.json` (what it is, what made it, how well it did)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spul.errors import SpulError
from spul.io import write_folder_atomic, write_json_atomic
from spul.version import __version__

MANIFEST = "spul.json"
FORMAT = "spul/1"


FINGERPRINT_FORMAT = "w2"
# Relative tolerance of a sampled weight per storage dtype: two rounding steps (one to load the weights at
# that precision, one more where a LoRA was merged on another device); a different model differs by more.
TOLERANCE = {"float32": 2.0**-20, "bfloat16": 2.0**-7, "float16": 2.0**-10}


def _legacy_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 4096) -> str:
    """The fingerprint of spul <= 0.x manifests: exact, so it tells apart the same model at two dtypes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples_per_tensor)
        sample = flat[::step][:samples_per_tensor].float().cpu()
        digest.update(name.encode())
        digest.update(sample.numpy().round(4).tobytes())
    return digest.hexdigest()[:32]


def model_fingerprint(model: torch.nn.Module, samples_per_tensor: int = 4) -> str:
    """Which weights a model has, whatever precision or device holds them (compare with `same_base`).

    `w2:<coarsest float dtype>:<legacy hash>:<exact hash of names, shapes and integer tensors>:<base64 of
    `samples_per_tensor` float32 values at fixed positions of every floating tensor>`. A merged LoRA
    changes the sampled values; casting to bf16 / fp16 moves them only within that dtype's rounding.
    """
    exact = hashlib.sha256()
    values: list[torch.Tensor] = []
    coarse = "float32"
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        exact.update(f"{name}:{tuple(tensor.shape)}".encode())
        if flat.numel() == 0:
            continue
        # integer arithmetic: a float32 linspace rounds n - 1 up to n for tensors of ~2**24+ values
        last = flat.numel() - 1
        positions = torch.arange(samples_per_tensor) * last // max(1, samples_per_tensor - 1)
        positions = positions.to(flat.device)
        sample = flat[positions].cpu()
        if tensor.is_floating_point():
            values.append(sample.float())
            dtype = str(tensor.dtype).removeprefix("torch.")
            if TOLERANCE.get(dtype, 0.0) > TOLERANCE[coarse]:
                coarse = dtype
        else:
            exact.update(sample.numpy().tobytes())
    packed = torch.cat(values).numpy().astype("<f4").tobytes() if values else b""
    return ":".join(
        [
            FINGERPRINT_FORMAT,
            coarse,
            _legacy_fingerprint(model),
            exact.hexdigest()[:16],
            base64.b64encode(packed).decode("ascii"),
        ]
    )


def _precision(values: np.ndarray, dtype: str) -> str:
    """The dtype whose rounding the values show: fp32 weights that a bf16 / fp16 checkpoint was upcast to
    count as that checkpoint's precision."""
    if dtype != "float32" or values.size == 0:
        return dtype
    as32 = values.astype(np.float32)
    if np.all((as32.view(np.uint32) & 0xFFFF) == 0):
        return "bfloat16"
    if np.all(as32.astype(np.float16).astype(np.float32) == as32):
        return "float16"
    return dtype


def same_base(saved: str, current: str) -> bool:
    """True when two fingerprints are of the same weights (within the coarser dtype's rounding).

    An old-style fingerprint (a bare 32-hex hash) is compared exactly with the current model's legacy hash.
    """
    if not current.startswith(FINGERPRINT_FORMAT + ":"):
        return saved == current
    _, dtype, legacy, exact, packed = current.split(":")
    if not saved.startswith(FINGERPRINT_FORMAT + ":"):
        return saved == legacy
    _, saved_dtype, _, saved_exact, saved_packed = saved.split(":")
    if saved_exact != exact:
        return False
    a = np.frombuffer(base64.b64decode(saved_packed), dtype="<f4").astype(np.float64)
    b = np.frombuffer(base64.b64decode(packed), dtype="<f4").astype(np.float64)
    if a.shape != b.shape:
        return False
    rtol = max(TOLERANCE.get(_precision(b, dtype), 0.0), TOLERANCE.get(_precision(a, saved_dtype), 0.0))
    # fp16 loses relative precision below its normal range (6e-5): allow its subnormal spacing there
    atol = 2.0**-24 if "float16" in (dtype, saved_dtype) else 0.0
    return bool(np.all(np.abs(a - b) <= atol + rtol * np.maximum(np.abs(a), np.abs(b))))


def trainable_parameters(module: torch.nn.Module) -> int:
    """How many parameters are being trained."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def save_artifact(folder: Path, save_weights, manifest: dict[str, Any]) -> Path:
    """Write weights (via `save_weights(tmp_folder)`) and the manifest as one atomic folder swap."""
    manifest = {
        "format": FORMAT,
        "spul_version": __version__,
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
    if not same_base(manifest["base_model"]["fingerprint"], fingerprint):
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
