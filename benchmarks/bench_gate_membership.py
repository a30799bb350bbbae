"""Does gated SPUL's gate tell its own training rows from unseen rows of their kind, and does a weaker fit
(a lower regularisation C of its logistic regression) stop that? The gate alone, no language model.

For each saved gated prompt the gate is refit on the prompt's own training rows (as `spul unlearn --gate`
fits it; the refit at the saved C must reproduce the saved thresholds, or the run stops) at each C, and
scored on the audit's rows (`spul audit`'s members and non-members, `--members` as there): per pair, the
membership AUC of the gate's score (members vs non-members; 0.5 = the gate cannot tell), and the share
of each side it flags (the prompt is served) and refuses (the generic answer outright).

    SPUL_DATA_DIR=../shared/data python benchmarks/bench_gate_membership.py runs/mem/seed-*/coverboth \
        --members finetune --limit 64 --c 0.01,0.1,1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from spul.artifacts import read_manifest
from spul.audit.members import audit_data
from spul.data import load_data
from spul.data.selection import trained_selection
from spul.guardrails import get_embedder
from spul.methods.guard import fit_text_gate
from spul.methods.spul import GATE_FOLDS

PAIRS = {"forget": ("train_forget", "test_forget"), "retain": ("train_retain", "test_retain")}


def memoised(embed):
    """`embed` that embeds each distinct text once across calls (the refits share their vectors)."""
    memo: dict[str, np.ndarray] = {}

    def run(texts):
        new = [t for t in dict.fromkeys(texts) if t not in memo]
        if new:
            memo.update(zip(new, np.asarray(embed(new)), strict=True))
        return np.stack([memo[t] for t in texts])

    return run


def pair_row(scores: dict[str, np.ndarray], bands: dict, pair: str) -> dict:
    """One pair's membership AUC of the gate score and its flag / refusal shares (%) on each side."""
    members, others = PAIRS[pair]
    truth = np.r_[np.ones(len(scores[members])), np.zeros(len(scores[others]))]
    row = {"auc": float(roc_auc_score(truth, np.r_[scores[members], scores[others]]))}
    for side, split in (("members", members), ("non-members", others)):
        flagged, refused = bands[split]
        row[f"flagged {side}"] = 100 * float(np.mean(flagged))
        row[f"refused {side}"] = 100 * float(np.mean(refused))
    return row


def prompt_rows(folder: str, args: argparse.Namespace, full, cs: list[float], embedders: dict) -> list[dict]:
    """The refit gate's rows for one saved gated prompt (`full`: the whole --data), one per C and pair
    (`embedders`: memoised embedders by name, shared by the prompts)."""
    manifest = read_manifest(folder)
    method = manifest["hyperparameters"]["method"]
    if not method.get("gate") or method.get("augment") or method.get("gate_names"):
        raise SystemExit(f"{folder}: not a gated prompt without augmentation or gate_names")
    selection = trained_selection(manifest, args.data)
    if selection is None:
        raise SystemExit(f"{folder}: its training rows are not a recorded draw of --data {args.data}")
    trained = selection.draw(full)[0]
    seed = manifest["hyperparameters"]["training"]["seed"]
    audit, _ = audit_data(manifest, full, args.data, args.limit, seed, members=args.members)
    name = method["gate_embedder"]
    embed = embedders.setdefault(name, memoised(get_embedder(name)))
    saved_c = method.get("gate_c", 1.0)
    rows = []
    for c in sorted({*cs, saved_c}):
        rule, _ = fit_text_gate(
            trained.train_forget.texts,
            trained.train_retain.texts,
            name,
            GATE_FOLDS,
            seed,
            method.get("gate_recall"),
            None,
            method.get("gate_refuse", 0.0),
            c,
            embed,
        )
        if c == saved_c:
            check_refit(folder, rule.gate)
        scores = {split: rule.scores(audit[split].texts) for pair in PAIRS.values() for split in pair}
        bands = {split: rule.gate.bands(value) for split, value in scores.items()}
        for pair in PAIRS:
            row = {"prompt": folder, "C": c, "pair": pair, "saved": c == saved_c}
            rows.append(row | pair_row(scores, bands, pair))
    return rows


def check_refit(folder: str, gate) -> None:
    """Stop unless the refit at the saved C has the saved gate's thresholds (the same rows, the same fit)."""
    saved = json.loads((Path(folder) / "gate.json").read_text(encoding="utf-8"))
    for key in ("threshold", "refuse_threshold"):
        mine, theirs = getattr(gate, key), saved.get(key)
        if (mine is None) != (theirs is None) or (mine is not None and abs(mine - theirs) > 1e-4):
            raise SystemExit(f"{folder}: the refit gate's {key} {mine} is not the saved {theirs}")


def main() -> None:
    """Print one markdown row per prompt, C and pair; write them as JSON with --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", nargs="+", help="saved gated SPUL prompt folders")
    parser.add_argument("--data", default="sst2-paper")
    parser.add_argument("--limit", type=int, default=64, help="audit rows per split, as spul audit's")
    parser.add_argument("--members", default="prompt", help="prompt or finetune, as spul audit's")
    parser.add_argument("--c", default="0.01,0.1,1", help="comma-separated regularisation strengths C")
    parser.add_argument("--out", default=None, help="write the rows to this JSON file")
    args = parser.parse_args()
    cs = [float(x) for x in args.c.split(",")]
    full, embedders = load_data(args.data), {}
    rows = [row for folder in args.prompts for row in prompt_rows(folder, args, full, cs, embedders)]
    columns = [k for k in rows[0] if k not in ("prompt", "C", "pair", "saved")]
    print("| prompt | C | pair | " + " | ".join(columns) + " |")
    print("|---" * (3 + len(columns)) + "|")
    for row in rows:
        mark = " (saved)" if row["saved"] else ""
        cells = [f"{row['auc']:.3f}"] + [f"{row[k]:.1f}" for k in columns[1:]]
        print(f"| {row['prompt']} | {row['C']:g}{mark} | {row['pair']} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
