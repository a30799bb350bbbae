"""Which rows does a saved prompt get wrong that the model without it got right, and do they name a
person (spaCy NER)? A quick look at whether a prompt keys on the forget set's names or on everything.

    SPUL_DATA_DIR=../shared/data python benchmarks/lost_rows.py runs/demo/prompt --limit 200
"""

from __future__ import annotations

import argparse

import numpy as np

from spul.audit.probes import EntityFinder
from spul.data import load_data
from spul.data.selection import parse_limit
from spul.engine import score_with_and_without
from spul.unlearned import load_unlearned


def main() -> None:
    """Print, per split, the ACC with and without the prompt and how many lost rows name a person."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("prompt", help="a saved prompt folder (spul unlearn --out)")
    ap.add_argument("--data", default="sst2-paper")
    ap.add_argument("--limit", default="200")
    ap.add_argument("--show", type=int, default=10, help="lost test-retain rows to print")
    args = ap.parse_args()
    model = load_unlearned(args.prompt)
    data = load_data(args.data, limit=parse_limit(args.limit))
    finder = EntityFinder.create()
    for name in ("test_retain", "test_forget"):
        split = data[name]
        prompted, plain = score_with_and_without(
            model.lm, model.encoder, model.verbalizer, split.texts, split.labels, model.prefix_fn,
            show_progress=False,
        )  # fmt: skip
        labels = np.array(split.labels)
        lost = (plain.predicted == labels) & (prompted.predicted != labels)
        person = np.array([bool(spans) for spans in finder.ner_spans(split.texts)])
        print(
            f"{name}: ACC {100 * (plain.predicted == labels).mean():.1f} -> "
            f"{100 * (prompted.predicted == labels).mean():.1f}; generic answers "
            f"{100 * (prompted.predicted < 0).mean():.1f} %; rows naming a person {person.sum()}; "
            f"lost {lost.sum()}, of which name a person {(lost & person).sum()}"
        )
        if name == "test_retain":
            for i in np.flatnonzero(lost)[: args.show]:
                print(f"   answered {prompted.predicted[i]:>2}, label {labels[i]}: {split.texts[i][:100]}")


if __name__ == "__main__":
    main()
