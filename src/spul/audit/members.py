"""Which rows are members: the train rows the prompt (and the fine-tune under it) were trained on, or the
fine-tune's own rows when unlearning covered more than the fine-tune saw."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spul.artifacts import MANIFEST, read_manifest
from spul.data.selection import MEMBER_SOURCES, Limit, pick, trained_selection
from spul.data.splits import UnlearningData
from spul.errors import SpulError


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


def _finetune_rows(
    full: UnlearningData, trained: UnlearningData, adapter: str | None, data: str
) -> UnlearningData | None:
    """The fine-tune's training rows: from its recorded selection, else the prompt's own rows where the
    fine-tune's data fingerprints equal them; None when unknown."""
    if adapter is None or not (Path(adapter) / MANIFEST).is_file():
        return None
    manifest = read_manifest(adapter)
    selection = trained_selection(manifest, data)
    if selection is not None:
        return selection.draw(full)[0]
    splits = manifest.get("data", {}).get("train", {}).get("splits", {})
    same = all(
        splits.get(name, {}).get("sha256") == trained[name].fingerprint()
        for name in ("train_retain", "train_forget")
    )
    return trained if same else None


def audit_data(
    manifest: dict[str, Any],
    full: UnlearningData,
    data: str,
    limit: Limit,
    seed: int,
    adapter: str | None = None,
    members: str = "prompt",
) -> tuple[UnlearningData, dict[str, Any]]:
    """The audit's four splits of `full` (the whole `--data`) and the membership check of a saved artifact:
    members = train rows it was trained on (drawn as its spul.json records; `members="finetune"`: the rows
    its fine-tune was trained on), non-members = test rows (cut like the members), each capped by `limit`."""
    if members not in MEMBER_SOURCES:
        raise SpulError(f"--members {members!r}: choose one of {', '.join(MEMBER_SOURCES)}")
    selection = trained_selection(manifest, data)
    trained, pool = (selection.draw(full)[0], full.cut(selection.max_chars)) if selection else (full, full)
    adapter = adapter if adapter is not None else manifest["base_model"].get("adapter")
    finetune = _finetune_rows(full, trained, adapter, data)
    if members == "finetune" and finetune is None:
        raise SpulError(
            f"--members finetune: the rows the fine-tune under this prompt was trained on are not known "
            f"(no fine-tuned adapter with a recorded selection on --data {data}); use --members prompt"
        )
    dataset = pick(finetune if members == "finetune" else trained, pool, limit, seed)
    check = membership_check(dataset, trained, manifest.get("data", {}).get("forget_sha256"), finetune)
    if members == "finetune":
        check["forget"] = "train_forget rows the fine-tune was trained on; non-members: test_forget"
        check["retain"] = "train_retain rows the fine-tune was trained on; non-members: test_retain"
    return dataset, check
