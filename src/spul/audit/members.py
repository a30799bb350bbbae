"""Which rows are members: the train rows the prompt (and the fine-tune under it) were trained on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from spul.artifacts import MANIFEST, read_manifest
from spul.data.splits import UnlearningData


def audit_splits(
    full: UnlearningData, trained: UnlearningData, limit: int | dict[str, int] | None, seed: int
) -> UnlearningData:
    """Train splits from the rows trained on, test splits from the whole data, capped by `limit`."""
    from_train, from_full = trained.sample(limit=limit, seed=seed), full.sample(limit=limit, seed=seed)
    splits = {n: (from_train if n.startswith("train") else from_full)[n] for n in full.splits}
    return replace(trained, splits=splits, warnings=[])


def membership_check(
    data: UnlearningData,
    trained: UnlearningData,
    forget_sha256: str | None,
    finetune_trained: UnlearningData | None = None,
) -> dict[str, Any]:
    """Whether the member rows are the ones the prompt was trained on, and how many the fine-tune saw."""
    verified = forget_sha256 is not None and trained.train_forget.fingerprint() == forget_sha256
    check: dict[str, Any] = {
        "forget": "train_forget rows the prompt was trained on; non-members: test_forget",
        "retain": "train_retain rows the prompt was trained on; non-members: test_retain",
        "verified": verified,
    }
    if not verified:
        check["note"] = (
            "the train_forget rows rebuilt here do not match the fingerprint in the prompt's spul.json, "
            "so some 'members' may never have been trained on; pass the --data (and forget rule) the "
            "prompt was trained with"
        )
    if finetune_trained is not None:
        check["in_finetune_data"] = {}
        for name in ("train_forget", "train_retain"):
            seen = set(finetune_trained[name].texts)
            check["in_finetune_data"][name] = {
                "members": len(data[name]),
                "seen_by_finetune": sum(t in seen for t in data[name].texts),
            }
    return check


def _trained_rows(full: UnlearningData, selection: dict[str, Any] | None) -> UnlearningData | None:
    """The rows a saved artifact was trained on, rebuilt from the selection in its spul.json."""
    from spul.cli import parse_limit

    if not selection:
        return None
    return full.sample(
        tau=selection.get("tau", 1.0), limit=parse_limit(selection.get("limit")), seed=selection["seed"]
    )


def _finetune_rows(
    full: UnlearningData, trained: UnlearningData, adapter: str | None, data: str
) -> UnlearningData | None:
    """The fine-tune's training rows: from its recorded selection, else the prompt's own rows where the
    fine-tune's data fingerprints equal them; None when unknown."""
    if adapter is None or not (Path(adapter) / MANIFEST).is_file():
        return None
    record = read_manifest(adapter).get("data", {})
    selection = record.get("selection")
    if selection and selection.get("data") == data:
        return _trained_rows(full, selection)
    splits = record.get("train", {}).get("splits", {})
    same = all(
        splits.get(name, {}).get("sha256") == trained[name].fingerprint()
        for name in ("train_retain", "train_forget")
    )
    return trained if same else None


def audit_data(
    prompt: str,
    data: str,
    data_dir: str | None,
    limit: int | dict[str, int] | None,
    seed: int,
    regex: str | None = None,
    keywords: str | None = None,
    test: str | None = None,
    adapter: str | None = None,
) -> tuple[UnlearningData, dict[str, Any]]:
    """The audit's four splits (members = rows the prompt was trained on) and the membership check."""
    from spul.cli import load_dataset, report_warnings

    manifest = read_manifest(prompt)
    full = load_dataset(
        data,
        data_dir,
        None,
        seed,
        ",".join(manifest["label_words"]),
        ",".join(manifest["generic_words"]),
        regex,
        keywords,
        test,
    )
    report_warnings(full)
    selection = manifest.get("data", {}).get("selection")
    same_data = bool(selection) and selection.get("data") == data
    trained = (_trained_rows(full, selection) if same_data else None) or full
    adapter = adapter if adapter is not None else manifest["base_model"].get("adapter")
    finetune = _finetune_rows(full, trained, adapter, data)
    dataset = audit_splits(full, trained, limit, seed)
    check = membership_check(dataset, trained, manifest.get("data", {}).get("forget_sha256"), finetune)
    return dataset, check
