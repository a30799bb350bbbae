"""Does a finished experiment's table depend on the precision its models are scored in?

On a CPU with AVX512-BF16, `precision: auto` scores every model under bf16 autocast. A weight baseline
(GA, RL, GA+KL, GA+GD, NPO) trains every weight in fp32; bf16 rounding of those weights at scoring time
can turn an update far below bf16's resolution into whole-ulp steps in the update's direction. This
re-scores the kept artifacts of a finished `spul experiment` (and the fine-tuned model they start from)
on each cell's own evaluation rows, in each precision asked for, beside the ACC the experiment recorded.

    python benchmarks/bench_precision.py runs/experiments/table1-imdb --precisions fp32 \\
        --splits train_retain,train_forget --out runs/precision-imdb

`--rounding` scores nothing: it shows why bf16 scoring can move a model. It counts the fine-tuned model's
weights that sit exactly on a bf16 rounding tie (half way between two bf16 values: any update, however
small, moves them half a bf16 step its way) or on a bf16 value (small updates round away), per weight
type, and per kept artifact the share of weights whose bf16 value differs from the fine-tuned model's.

    python benchmarks/bench_precision.py runs/experiments/table1-imdb --rounding --out runs/rounding-imdb
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch

from spul.artifacts import MANIFEST, read_manifest
from spul.data import load_data
from spul.data.selection import Selection
from spul.evaluation import evaluate
from spul.io import write_json_atomic, write_text_atomic
from spul.models import load_model
from spul.pipeline import load_unlearned


def cells(experiment: Path, kinds: set[str]) -> list[tuple[Path, dict]]:
    """(artifact folder, its manifest) of every kept artifact of these kinds, by method then lr."""
    found = []
    for manifest_path in sorted(experiment.glob(f"cells/*/artifact/{MANIFEST}")):
        manifest = read_manifest(manifest_path.parent)
        if manifest["kind"] in kinds:
            found.append((manifest_path.parent, manifest))
    return sorted(found, key=lambda c: (c[1]["method"], c[1]["hyperparameters"]["training"]["lr"]))


@functools.cache
def full_data(data: str, data_dir: str | None, label_words: tuple, generic_words: tuple, seed: int):
    """A dataset, read once for all the cells that share it."""
    return load_data(data, data_dir=data_dir, label_words=label_words, generic_words=generic_words, seed=seed)


def evaluation_rows(manifest: dict, data_dir: str | None):
    """The rows the experiment scored the artifact on (checked against its manifest's fingerprint)."""
    selection = Selection.from_manifest(manifest["data"]["selection"])
    words = tuple(manifest["label_words"]), tuple(manifest["generic_words"])
    rows = selection.draw(full_data(selection.data, data_dir, *words, selection.seed))[1]
    if rows.fingerprint() != manifest["data"]["eval"]:
        raise SystemExit(f"the evaluation rows of {manifest['data']['selection']} are not the ones scored")
    return rows


def on_bf16_grid(weight: torch.Tensor) -> tuple[int, int]:
    """(weights exactly half way between two bf16 values, weights that are bf16 values) of a tensor."""
    weight = weight.float()
    up = torch.nextafter(weight, torch.full_like(weight, float("inf"))).to(torch.bfloat16)
    down = torch.nextafter(weight, torch.full_like(weight, float("-inf"))).to(torch.bfloat16)
    ties = ((up != down) & (weight != 0)).sum().item()
    exact = (weight.to(torch.bfloat16).float() == weight).sum().item()
    return ties, exact


def rounding(found: list[tuple[Path, dict]], out: Path) -> None:
    """Print and write the bf16 grid analysis of the fine-tuned model and each kept weights artifact."""
    base = found[0][1]["base_model"]
    finetuned = load_model(base["spec"], adapter=base["adapter"], precision="fp32")
    reference = finetuned.model.state_dict()
    per_type: dict[str, list[int]] = {}
    for name, weight in reference.items():
        counts = per_type.setdefault(name.split(".")[-2], [0, 0, 0])
        for i, count in enumerate((*on_bf16_grid(weight), weight.numel())):
            counts[i] += count
    lines = ["Fine-tuned model: share of weights on a bf16 tie / on a bf16 value", ""]
    lines += ["| weight | tie | bf16 value |", "|---|---|---|"]
    total = [sum(c[i] for c in per_type.values()) for i in range(3)]
    for name, (ties, exact, n) in [*per_type.items(), ("all", tuple(total))]:
        lines.append(f"| {name} | {ties / n:.2%} | {exact / n:.2%} |")
    lines += ["", "Kept artifacts: largest weight change, share of weights whose bf16 value changed", ""]
    lines += ["| model | lr | max abs change | bf16 values changed |", "|---|---|---|---|"]
    rounded = {name: weight.to(torch.bfloat16) for name, weight in reference.items()}  # once for all
    for folder, manifest in found:
        trained = load_model(str(folder), precision="fp32").model.state_dict()
        changed = biggest = 0.0
        for name, weight in reference.items():
            biggest = max(biggest, (trained[name] - weight).abs().max().item())
            changed += (trained[name].to(torch.bfloat16) != rounded[name]).sum().item()
        lr = manifest["hyperparameters"]["training"]["lr"]
        lines.append(f"| {manifest['method']} | {lr} | {biggest:.2g} | {changed / total[2]:.2%} |")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "rounding.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def accs(table: dict, splits: tuple[str, ...]) -> dict[str, float]:
    """ACC per split, rounded."""
    return {s: round(table[s]["acc"], 2) for s in splits}


def main() -> None:
    """Re-score, print and write the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", type=Path, help="a finished `spul experiment` output folder")
    parser.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16, auto")
    parser.add_argument("--splits", default="train_retain,train_forget,test_retain,test_forget")
    parser.add_argument("--kinds", default="weights", help="artifact kinds to re-score (weights, adapter)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/precision"))
    parser.add_argument("--rounding", action="store_true", help="only the bf16 grid analysis (see above)")
    args = parser.parse_args()
    splits = tuple(args.splits.split(","))
    precisions = args.precisions.split(",")
    found = cells(args.experiment, set(args.kinds.split(",")))
    if not found:
        raise SystemExit(f"{args.experiment}: no kept artifact of kind {args.kinds}")
    if args.rounding:
        rounding([c for c in found if c[1]["kind"] == "weights"], args.out)
        return
    rows_out: list[dict] = []

    def record(name: str, lr, recorded: dict, precision: str, table: dict, seconds: float) -> None:
        row = {"model": name, "lr": lr, "precision": precision, "seconds": round(seconds, 1)}
        row |= {"recorded": accs(recorded, splits), "rescored": accs(table, splits)}
        rows_out.append(row)
        print(json.dumps(row), flush=True)

    # the fine-tuned model the cells start from (all share it in one experiment; retrain starts without it)
    tuned = [manifest for _, manifest in found if manifest["base_model"]["adapter"]]
    first = tuned[0] if tuned else found[0][1]
    data = evaluation_rows(first, args.data_dir)
    spec, adapter = first["base_model"]["spec"], first["base_model"]["adapter"]
    finetuned = read_manifest(Path(adapter)) if adapter else {}
    for precision in precisions if adapter else []:
        start = time.perf_counter()
        lm = load_model(spec, adapter=adapter, precision=precision)
        table = evaluate(lm, data, splits=splits, show_progress=False)
        record("Fine-tuned", None, finetuned["metrics"], precision, table, time.perf_counter() - start)
        del lm
    for folder, manifest in found:
        data = evaluation_rows(manifest, args.data_dir)
        lr = manifest["hyperparameters"]["training"]["lr"]
        for precision in precisions:
            start = time.perf_counter()
            unlearned = load_unlearned(folder, precision=precision)
            table = unlearned.evaluate(data, splits=splits, show_progress=False)
            record(manifest["method"], lr, manifest["metrics"], precision, table, time.perf_counter() - start)
            del unlearned

    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "precision.json", {"experiment": str(args.experiment), "rows": rows_out})
    lines = [
        f"ACC (%) per split ({', '.join(splits)}): as the experiment recorded it -> re-scored",
        "",
        "| model | lr | precision | " + " | ".join(splits) + " |",
        "|---" * (3 + len(splits)) + "|",
    ]
    for row in rows_out:
        cells_text = [f"{row['recorded'][s]:.1f} -> {row['rescored'][s]:.1f}" for s in splits]
        lines.append(
            f"| {row['model']} | {row['lr'] or '-'} | {row['precision']} | " + " | ".join(cells_text) + " |"
        )
    write_text_atomic(args.out / "precision.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
