"""A memorising scenario for the membership audit (issue 14): can `spul audit` see membership at all?

The README's demo fine-tune (2 epochs on 500 rows) leaves no membership signal (forget AUC about 0.5 before
unlearning), so an audit of it cannot show that unlearning removed any. Here the fine-tune runs 10 epochs on
a small training set at lr 1e-3, so train rows separate from test rows (label-word NLL AUC 0.70 on the forget
pair, docs/results.md; lr 3e-4 gave 0.63). Then:

1. SPUL (the default recipe; `--spul-args` adds options, e.g. gated SPUL) on the same rows, from that
   fine-tune;
2. `retrain`: the same LoRA fine-tune on the retain rows alone (the model that never saw the forget set);
3. `spul audit` of both on the same member / non-member rows (no adaptive attack: this is about MIA);
4. a MUSE-style PrivLeak per score: (AUC of the model - AUC of the retrained model) / AUC of the retrained
   model, forget pair (train_forget members vs test_forget non-members); 0 = indistinguishable from retrain.

With `--seeds 0,1,2` each seed draws its own rows and fine-tunes anew (OUT/seed-S/); the summary gives each
model's AUC and its distance to the retrained model's, mean ± std over the seeds (64 rows per side make one
seed's AUC noise-sized: its 95 % interval is about ± 0.1). `--name` names the SPUL step, so another set of
`--spul-args` (a lever) reuses each seed's fine-tune, retrained model and retrain audit. `--forget-all`: the
SPUL step unlearns every train_forget row, as a deletion request covering the whole forgotten kind does (the
README's demo); the members stay the rows the fine-tune saw (`spul audit --members finetune`).
`--spul-retain N`: the SPUL step draws N train_retain rows instead of the fine-tune's own (a gate fit on
the fine-tune's retain rows alone learns those rows, not the task).

Each step is skipped when its output exists (rerun to resume). Writes OUT/seed-S/memorisation.{json,md} and,
with its name, OUT/NAME.{json,md} (the seeds' summary).

    python benchmarks/bench_memorisation.py --out runs/memorisation --data-dir ../shared/data --seeds 0,1,2 \
        --name gated --spul-args "--gate --method-args gate_recall=0.9,gate_refuse=0.02"
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def spul(*args: str) -> float:
    """Run one `spul` command (seconds it took); stop on failure."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spul", *args], check=True)
    return time.perf_counter() - start


def privleak(auc: float, retrained: float) -> float:
    """MUSE's PrivLeak in percent: the relative AUC gap to the retrained model."""
    return 100.0 * (auc - retrained) / retrained


def main() -> None:
    """Run each seed's steps (skipping finished ones), print its PrivLeak table and the seeds' summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/memorisation")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="sst2-paper")
    parser.add_argument("--retain", type=int, default=64, help="train_retain rows trained on")
    parser.add_argument("--forget", type=int, default=64, help="train_forget rows trained on")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tune (and retrain) epochs")
    parser.add_argument("--lr", type=float, default=1e-3)  # 3e-4 left forget AUC at 0.63
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (rows drawn, fine-tune, SPUL)")
    parser.add_argument("--name", default="spul", help="the SPUL step's folder and summary name")
    parser.add_argument("--spul-args", default="", help="extra `spul unlearn` options for the SPUL step")
    parser.add_argument(
        "--forget-all",
        action="store_true",
        help="the SPUL step unlearns every train_forget row (a deletion request covering the whole kind, as "
        "the README's demo does), not only the fine-tune's; its audit's members stay the fine-tune's rows",
    )
    parser.add_argument(
        "--spul-retain",
        type=int,
        default=None,
        help="train_retain rows the SPUL step draws (default: --retain, the fine-tune's own rows); more "
        "rows of the task spread its retain side (and a gate's) beyond the rows the fine-tune memorised",
    )
    args = parser.parse_args()
    try:
        seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 0,1,2")
    if args.name in ("finetuned", "retrain") or not args.name.isidentifier():
        parser.error(f"--name {args.name!r}: a plain name other than finetuned / retrain")
    from spul.audit.mia import SCORE_TITLES  # here: --help stays free of heavy imports

    results = {seed: run_seed(args, seed) for seed in seeds}
    for seed, result in results.items():
        table = markdown(result["table"], result["note"], SCORE_TITLES)
        (Path(args.out) / f"seed-{seed}" / f"memorisation-{args.name}.md").write_text(table + "\n")
        print(f"seed {seed}:\n{table}\n")
    summary = seed_summary({seed: with_chance(result["table"]) for seed, result in results.items()})
    lines = [
        f"{args.name} ({args.spul_args or 'the default recipe'}), seeds {args.seeds}: forget-pair AUC mean "
        "± std over the seeds, and its distance to the retrained model's AUC (|AUC - retrain|, mean ± std). "
        f"'{CHANCE}': a model whose scores tell nothing about membership; its distance is how far the "
        "retrained model's own AUC sits from chance on these rows (the smallest gap that forgetting "
        "everything would give).",
        "",
        "| score | " + " | ".join(summary) + " |",
        "|---" * (1 + len(summary)) + "|",
    ]
    for score in next(iter(summary.values())):
        cells = []
        for cell in (summary[model][score] for model in summary):
            gap = "" if cell["gap_mean"] is None else f"; gap {cell['gap_mean']:.3f} ± {cell['gap_std']:.3f}"
            cells.append(f"{cell['auc_mean']:.3f} ± {cell['auc_std']:.3f}{gap}")
        lines.append(f"| {SCORE_TITLES[score]} | " + " | ".join(cells) + " |")
    out = Path(args.out)
    (out / f"{args.name}.json").write_text(json.dumps({"settings": vars(args), "summary": summary}, indent=2))
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def seed_steps(args: argparse.Namespace, out: Path, data: list[str]) -> dict[str, list[str]]:
    """The `spul` commands of one seed's fine-tune, SPUL step and retrain (without --out)."""
    rows = ["--limit", f"train_retain={args.retain},train_forget={args.forget}", "--eval-limit", "16"]
    model = ["--model", args.model]
    fit = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", "16"]
    forget = "" if args.forget_all else f",train_forget={args.forget}"
    unlearned = ["--limit", f"train_retain={args.spul_retain or args.retain}{forget}", "--eval-limit", "16"]
    return {
        "finetuned": ["finetune", *model, *data, *rows, *fit],
        args.name: [
            "unlearn",
            *model,
            "--adapter",
            str(out / "finetuned"),
            *data,
            *unlearned,
            *shlex.split(args.spul_args),
        ],
        "retrain": ["unlearn", "--method", "retrain", *model, *data, *rows, *fit],
    }


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """One seed's fine-tune, SPUL step, retrain and audits (finished ones skipped); its PrivLeak table."""
    out = Path(args.out) / f"seed-{seed}"
    data = ["--data", args.data, "--seed", str(seed)] + (
        ["--data-dir", args.data_dir] if args.data_dir else []
    )
    saved = out / f"memorisation-{args.name}.json"  # a resumed run keeps the seconds of the steps it skips
    seconds = json.loads(saved.read_text())["seconds"] if saved.is_file() else {}
    for name, command in seed_steps(args, out, data).items():
        if not (out / name / "spul.json").is_file():
            seconds[name] = spul(*command, "--out", str(out / name))
    cap = str(min(args.retain, args.forget))
    audits = {}
    for name in (args.name, "retrain"):
        folder = out / f"audit-{name}"
        if not (folder / "audit.json").is_file():
            common = ["--limit", cap, "--attack-rows", "0", "--no-probe-retain", "-q"]
            if args.forget_all and name == args.name:  # members: the rows the fine-tune memorised
                common += ["--members", "finetune"]
            seconds[f"audit-{name}"] = spul(
                "audit", "--prompt", str(out / name), *data, *common, "--out", str(folder)
            )
        audits[name] = json.loads((folder / "audit.json").read_text())
    retrained = audits["retrain"]["mia"]["unlearned"]["forget"]
    models = {"fine-tuned": audits[args.name]["mia"]["fine_tuned"]["forget"]}
    method = json.loads((out / args.name / "spul.json").read_text())["hyperparameters"]["method"]
    title = "gated SPUL" if method.get("gate") else "SPUL"  # as saved (a resumed run may pass other args)
    models |= {title: audits[args.name]["mia"]["unlearned"]["forget"], "retrain": retrained}
    table = {
        model: {
            score: {
                "auc": cell["auc"],
                "ci95": cell.get("ci95"),
                "tpr_at_1%_fpr": cell["tpr_at_1%_fpr"],
                "tpr_at_5%_fpr": cell["tpr_at_5%_fpr"],
                "privleak": privleak(cell["auc"], retrained[score]["auc"]),
            }
            for score, cell in cells.items()
        }
        for model, cells in models.items()
    }
    note = (
        f"Forget pair: {cap} train_forget members vs {cap} test_forget non-members; fine-tune {args.epochs} "
        f"epochs on {args.retain} + {args.forget} rows, seed {seed}. Cells: AUC [95% CI] / TPR at 5% "
        "FPR (%) / PrivLeak (%, 0 = like the retrained model)."
    )
    result = {
        "settings": vars(args) | {"seed": seed},
        "seconds": seconds,
        "members": audits[args.name]["members"],
    }
    result |= {"table": table, "note": note}
    saved.write_text(json.dumps(result, indent=2))
    return result


def markdown(table: dict, note: str, titles: dict[str, str]) -> str:
    """One seed's table: a row per score, a column per model."""
    lines = [note, "", "| score | " + " | ".join(table) + " |", "|---" * (1 + len(table)) + "|"]
    for score in table["retrain"]:
        cells = []
        for model in table:
            cell = table[model][score]
            low, high = cell["ci95"] or (float("nan"), float("nan"))
            tpr, leak = 100 * cell["tpr_at_5%_fpr"], cell["privleak"]
            cells.append(f"{cell['auc']:.3f} [{low:.2f}, {high:.2f}] / {tpr:.1f} / {leak:+.1f}")
        lines.append(f"| {titles[score]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CHANCE = "no signal"


def with_chance(table: dict) -> dict:
    """One seed's table with a model at AUC 0.5 on every score (no membership signal) before retrain."""
    models = {model: cells for model, cells in table.items() if model != "retrain"}
    models[CHANCE] = {score: {"auc": 0.5} for score in table["retrain"]}
    return models | {"retrain": table["retrain"]}


def seed_summary(tables: dict[int, dict]) -> dict[str, dict[str, dict]]:
    """Per model and score: AUC mean and std over the seeds' tables and, but for the retrained model, the
    mean and std of |AUC - the retrained model's AUC| (each seed against its own retrained model)."""
    import numpy as np

    first = next(iter(tables.values()))
    summary: dict[str, dict[str, dict]] = {}
    for model in first:
        summary[model] = {}
        for score in first["retrain"]:
            aucs = np.array([table[model][score]["auc"] for table in tables.values()])
            cell = {
                "auc_mean": float(aucs.mean()),
                "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
            }
            gaps = None
            if model != "retrain":
                gaps = np.abs(aucs - np.array([table["retrain"][score]["auc"] for table in tables.values()]))
            cell["gap_mean"] = None if gaps is None else float(gaps.mean())
            cell["gap_std"] = None if gaps is None else (float(gaps.std(ddof=1)) if len(gaps) > 1 else 0.0)
            summary[model][score] = cell
    return summary


if __name__ == "__main__":
    main()
