"""Deep forgetting (issue 14): the fast recipe with and without the label-uniform term and input augmentation.

Each variant unlearns from one fine-tuned adapter on the same rows and seed, then is scored on up to 200
rows per split: served-label ACC and label-only ACC / label-margin AUC (what returned probabilities give
away); with `--probes`, also the served ACC on the test splits under the audit's rewrites (its own
wording, not the augmentations'). `--unlearn-args` gives every variant the same base settings (e.g. the
README demo's), the variant's `--method-args` joined to the base's. Writes OUT/variants.json and prints
markdown tables.

    python benchmarks/bench_deep.py --adapter runs/experiments/cache/finetuned-... --out runs/deep \
        --variants fast,uniform,uniform+augment --seeds 0
"""

from __future__ import annotations

import argparse
import json
import shlex
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
    "inject": ("augment=inject", []),
    "inject+punct": ("augment=inject,punct", []),
    "append": ("augment=append", []),
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
    parser.add_argument("--unlearn-args", default="", help="spul unlearn flags every variant gets")
    parser.add_argument("--probes", default="", help="audit probes scored on the test splits (comma list)")
    args = parser.parse_args()
    out = Path(args.out)
    probes = [p for p in args.probes.split(",") if p]
    rows = {}
    for name in args.variants.split(","):
        for seed in args.seeds.split(","):
            folder = out / f"{name}-seed{seed}"
            if not (folder / "table" / "results.json").is_file():
                start = time.perf_counter()
                extra = unlearn_flags(args.unlearn_args, *VARIANTS[name])
                common = ["--data", "sst2-paper", "--limit", args.limit, "--eval-limit", "50", "--seed", seed]
                run(["unlearn", "--adapter", args.adapter, *common, "--out", folder / "prompt", "-q", *extra])
                seconds = time.perf_counter() - start
                run(["evaluate", "--prompt", folder / "prompt", "--data", "sst2-paper", "--limit", args.eval,
                     "--out", folder / "table", "-q"])  # fmt: skip
                (folder / "seconds.txt").write_text(f"{seconds:.0f}\n")
            table = json.loads((folder / "table" / "results.json").read_text())["rows"]
            manifest = json.loads((folder / "prompt" / "spul.json").read_text())
            key = f"{name} (seed {seed})"
            rows[key] = {
                "fine_tuned": table["Fine-tuned"],
                "unlearned": table["SPUL"],
                "unlearn_seconds": float((folder / "seconds.txt").read_text()),
                "steps": manifest["steps"],
            }
            if probes:
                rows[key]["probes"] = probe_accuracy(folder, args.eval, probes)
    (out / "variants.json").write_text(json.dumps(rows, indent=1))
    print("| variant | model | " + " | ".join(s.replace("_", " ") for s in SPLITS) + " | unlearn s |")
    print("|---" * (3 + len(SPLITS)) + "|")
    for name, row in rows.items():
        for model in ("fine_tuned", "unlearned"):
            cells = [f"{row[model][s]['acc']:.1f} / {row[model][s]['label_acc']:.1f} / "
                     f"{row[model][s]['margin_auc']:.2f}" for s in SPLITS]  # fmt: skip
            seconds = f"{row['unlearn_seconds']:.0f} ({row['steps']} steps)" if model == "unlearned" else ""
            print(f"| {name} | {model} | " + " | ".join(cells) + f" | {seconds} |")
    probed = {name: row["probes"] for name, row in rows.items() if "probes" in row}
    if probed:
        names = list(next(iter(probed.values())))
        print("\nServed ACC (%) test retain / test forget under each probe:\n")
        print("| variant | " + " | ".join(names) + " |\n" + "|---" * (1 + len(names)) + "|")
        for name, table in probed.items():
            cells = [f"{table[p]['test_retain']:.1f} / {table[p]['test_forget']:.1f}" for p in names]
            print(f"| {name} | " + " | ".join(cells) + " |")


def unlearn_flags(base: str, method_args: str, flags: list[str]) -> list[str]:
    """The base flags, then the variant's; one `--method-args` joining the base's and the variant's."""
    words, joined = shlex.split(base), [method_args] if method_args else []
    if "--method-args" in words:
        at = words.index("--method-args")
        joined.insert(0, words[at + 1])
        del words[at : at + 2]
    return words + (["--method-args", ",".join(joined)] if joined else []) + flags


def probe_accuracy(folder: Path, limit: str, probes: list[str]) -> dict[str, dict[str, float]]:
    """Served ACC (%) of the prompt on the test splits of the evaluation rows, as they are and under each
    probe (cached in folder/probes.json)."""
    cached = folder / "probes.json"
    known = json.loads(cached.read_text()) if cached.is_file() else {}
    wanted = ["none", *probes]
    if all(p in known for p in wanted):
        return {p: known[p] for p in wanted}
    import numpy as np

    from spul.audit.probes import apply_probe
    from spul.audit.report import served_answers
    from spul.cli.evaluate import _evaluation_rows
    from spul.data.presets import load_data
    from spul.unlearned import load_unlearned

    # the rows `spul evaluate --prompt ... --limit` scores (the table's)
    data = _evaluation_rows(str(folder / "prompt"), "sst2-paper", limit, 0, load_data("sst2-paper"))
    unlearned = load_unlearned(folder / "prompt")
    for probe in wanted:
        known[probe] = {}
        for split in ("test_retain", "test_forget"):
            texts = data[split].texts if probe == "none" else apply_probe(probe, data[split].texts)
            answers = served_answers(unlearned, texts, data[split].labels, batch_size=32)[0]
            known[probe][split] = 100.0 * float(np.mean(answers == np.asarray(data[split].labels)))
    cached.write_text(json.dumps(known, indent=1))
    return {p: known[p] for p in wanted}


def run(args: list) -> None:
    """One spul command; stop with its output on failure."""
    done = subprocess.run([sys.executable, "-m", "spul", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"spul {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")


if __name__ == "__main__":
    main()
