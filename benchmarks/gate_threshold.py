"""Gated SPUL's table at gate thresholds above the saved one: how many forget points a higher threshold
gives back for the retain points it saves. One scoring pass per prompt (with and without the prompt);
the rows are `spul evaluate --prompt`'s (its train splits from the rows the prompt was trained on).

    SPUL_DATA_DIR=../shared/data python benchmarks/gate_threshold.py runs/demo/prompt --offsets 0,0.5,1
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from spul.artifacts import read_manifest
from spul.data import load_data
from spul.data.selection import Selection, parse_limit, trained_selection
from spul.engine import score_with_and_without
from spul.unlearned import load_unlearned

SPLITS = ("train_retain", "train_forget", "test_retain", "test_forget")


def main() -> None:
    """Print, per prompt and split, the fine-tuned ACC and the served ACC at each threshold offset."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prompts", nargs="+", help="saved gated SPUL prompt folders (spul unlearn --gate)")
    ap.add_argument("--data", default="sst2-paper")
    ap.add_argument("--limit", default="200", help="rows per split, as spul evaluate's --limit")
    ap.add_argument("--offsets", default="0,0.25,0.5,0.75,1", help="added to the saved threshold")
    args = ap.parse_args()
    offsets = [float(x) for x in args.offsets.split(",")]
    full = load_data(args.data)
    print("prompt | split | fine-tuned | " + " | ".join(f"+{o:g}" for o in offsets))
    for folder in args.prompts:
        model = load_unlearned(folder)
        if model.guard is None or not hasattr(model.guard.rule, "gate"):
            raise SystemExit(f"{folder}: not a gated prompt (spul unlearn --gate)")
        gate = model.guard.rule
        selection = trained_selection(read_manifest(folder), args.data) or Selection(args.data)
        rows = replace(selection, eval_limit=parse_limit(args.limit)).draw(full)[1]
        for name in SPLITS:
            split = rows[name]
            labels = np.array(split.labels)
            prompted, plain = score_with_and_without(
                model.lm, model.encoder, model.verbalizer, split.texts, split.labels, model.prefix_fn,
                show_progress=False,
            )  # fmt: skip
            scores = gate.gate.scores(np.asarray(gate.embed(list(split.texts))))
            flagged = [scores >= gate.gate.threshold + o for o in offsets]
            served = [np.where(f, prompted.predicted, plain.predicted) for f in flagged]
            accs = " | ".join(f"{100 * np.mean(p == labels):.1f}" for p in served)
            print(f"{folder} | {name} | {100 * np.mean(plain.predicted == labels):.1f} | {accs}", flush=True)


if __name__ == "__main__":
    main()
