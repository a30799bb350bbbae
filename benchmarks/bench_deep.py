"""Deep forgetting (issue 14): the fast recipe with and without the label-uniform term and input augmentation.

Each variant unlearns from one fine-tuned adapter on the same rows and seed, then is scored on up to 200
rows per split: served-label ACC and label-only ACC / label-margin AUC (what returned probabilities give
away). Writes OUT/variants.json and prints one markdown table.

    python benchmarks/bench_deep.py --adapter runs/experiments/cache/finetuned-... --out runs/deep \
        --variants fast,uniform,uniform+augment --seeds 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

AUGMENT = "case,punct,inject,template,demos"
# name -> (--method-args, other flags); with five augmentations a row has six versions, so one epoch sees
# each row about as often as the recipe's four epochs do without them
VARIANTS = {
    "fast": ("", []),
    "uniform": ("label_uniform=1.0", []),
    "uniform5": ("label_uniform=5.0", []),
    "augment": (f"augment={AUGMENT}", ["--epochs", "1"]),
    "uniform+augment": (f"label_uniform=1.0,augment={AUGMENT}", ["--epochs", "1"]),
}
SPLITS = ("train_retain", "train_forget", "test_retain", "test_forget")


def main() -> None:
    """Run each variant (skipping finished ones) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--out", default="runs/deep")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--limit", default="train_retain=300,train_forget=200")
    parser.add_argument("--eval", default="train_retain=200,train_forget=200,test_retain=200,test_forget=200")
    args = parser.parse_args()
    out = Path(args.out)
    rows = {}
    for name in args.variants.split(","):
        for seed in args.seeds.split(","):
            folder = out / f"{name}-seed{seed}"
            if not (folder / "table" / "results.json").is_file():
                start = time.perf_counter()
                method_args, flags = VARIANTS[name]
                extra = (["--method-args", method_args] if method_args else []) + flags
                common = ["--data", "sst2-paper", "--limit", args.limit, "--eval-limit", "50", "--seed", seed]
                run(["unlearn", "--adapter", args.adapter, *common, "--out", folder / "prompt", "-q", *extra])
                seconds = time.perf_counter() - start
                run(["evaluate", "--prompt", folder / "prompt", "--data", "sst2-paper", "--limit", args.eval,
                     "--out", folder / "table", "-q"])  # fmt: skip
                (folder / "seconds.txt").write_text(f"{seconds:.0f}\n")
            table = json.loads((folder / "table" / "results.json").read_text())["rows"]
            manifest = json.loads((folder / "prompt" / "spul.json").read_text())
            rows[f"{name} (seed {seed})"] = {
                "fine_tuned": table["Fine-tuned"],
                "unlearned": table["SPUL"],
                "unlearn_seconds": float((folder / "seconds.txt").read_text()),
                "steps": manifest["steps"],
            }
    (out / "variants.json").write_text(json.dumps(rows, indent=1))
    print("| variant | model | " + " | ".join(s.replace("_", " ") for s in SPLITS) + " | unlearn s |")
    print("|---" * (3 + len(SPLITS)) + "|")
    for name, row in rows.items():
        for model in ("fine_tuned", "unlearned"):
            cells = [f"{row[model][s]['acc']:.1f} / {row[model][s]['label_acc']:.1f} / "
                     f"{row[model][s]['margin_auc']:.2f}" for s in SPLITS]  # fmt: skip
            seconds = f"{row['unlearn_seconds']:.0f} ({row['steps']} steps)" if model == "unlearned" else ""
            print(f"| {name} | {model} | " + " | ".join(cells) + f" | {seconds} |")


def run(args: list) -> None:
    """One spul command; stop with its output on failure."""
    done = subprocess.run([sys.executable, "-m", "spul", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"spul {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")


if __name__ == "__main__":
    main()
