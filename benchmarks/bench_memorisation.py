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

Each step is skipped when its output exists (rerun to resume). Writes OUT/memorisation.{json,md}.

    python benchmarks/bench_memorisation.py --out runs/memorisation --data-dir ../shared/data
    python benchmarks/bench_memorisation.py --out runs/memorisation-gated --data-dir ../shared/data \
        --spul-args "--gate --method-args gate_recall=0.9,gate_refuse=0.02"
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
    """Run the scenario's steps (skipping finished ones) and print the PrivLeak table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/memorisation")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="sst2-paper")
    parser.add_argument("--retain", type=int, default=64, help="train_retain rows trained on")
    parser.add_argument("--forget", type=int, default=64, help="train_forget rows trained on")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tune (and retrain) epochs")
    parser.add_argument("--lr", type=float, default=1e-3)  # 3e-4 left forget AUC at 0.63
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spul-args", default="", help="extra `spul unlearn` options for the SPUL step")
    args = parser.parse_args()
    from spul.audit.mia import SCORE_TITLES  # here: --help stays free of heavy imports

    out = Path(args.out)
    data = ["--data", args.data, "--seed", str(args.seed)] + (
        ["--data-dir", args.data_dir] if args.data_dir else []
    )
    rows = ["--limit", f"train_retain={args.retain},train_forget={args.forget}", "--eval-limit", "16"]
    model = ["--model", args.model]
    fit = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", "16"]
    spul_extra = shlex.split(args.spul_args)
    seconds = {}
    steps = {
        "finetuned": ["finetune", *model, *data, *rows, *fit],
        "spul": ["unlearn", *model, "--adapter", str(out / "finetuned"), *data, *rows, *spul_extra],
        "retrain": ["unlearn", "--method", "retrain", *model, *data, *rows, *fit],
    }
    for name, command in steps.items():
        if not (out / name / "spul.json").is_file():
            seconds[name] = spul(*command, "--out", str(out / name))
    cap = str(min(args.retain, args.forget))
    audits = {}
    for name in ("spul", "retrain"):
        folder = out / f"audit-{name}"
        if not (folder / "audit.json").is_file():
            common = ["--limit", cap, "--attack-rows", "0", "--no-probe-retain", "-q"]
            seconds[f"audit-{name}"] = spul(
                "audit", "--prompt", str(out / name), *data, *common, "--out", str(folder)
            )
        audits[name] = json.loads((folder / "audit.json").read_text())
    retrained = audits["retrain"]["mia"]["unlearned"]["forget"]
    models = {"fine-tuned": audits["spul"]["mia"]["fine_tuned"]["forget"]}
    method = json.loads((out / "spul" / "spul.json").read_text())["hyperparameters"]["method"]
    title = "gated SPUL" if method.get("gate") else "SPUL"  # as saved (a resumed run may pass other args)
    models |= {title: audits["spul"]["mia"]["unlearned"]["forget"], "retrain": retrained}
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
    result = {
        "settings": vars(args),
        "seconds": seconds,
        "members": audits["spul"]["members"],
        "table": table,
    }
    lines = [
        f"Forget pair: {cap} train_forget members vs {cap} test_forget non-members; fine-tune {args.epochs} "
        f"epochs on {args.retain} + {args.forget} rows, seed {args.seed}. Cells: AUC [95% CI] / TPR at 5% "
        "FPR (%) / PrivLeak (%, 0 = like the retrained model).",
        "",
        "| score | " + " | ".join(models) + " |",
        "|---" * (1 + len(models)) + "|",
    ]
    for score in retrained:
        cells = []
        for model in models:
            cell = table[model][score]
            low, high = cell["ci95"] or (float("nan"), float("nan"))
            tpr, leak = 100 * cell["tpr_at_5%_fpr"], cell["privleak"]
            cells.append(f"{cell['auc']:.3f} [{low:.2f}, {high:.2f}] / {tpr:.1f} / {leak:+.1f}")
        lines.append(f"| {SCORE_TITLES[score]} | " + " | ".join(cells) + " |")
    (out / "memorisation.json").write_text(json.dumps(result, indent=2))
    (out / "memorisation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
