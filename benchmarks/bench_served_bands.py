"""Where a gated prompt's served answers give the forgotten label away, by the gate's band.

For each split, the rows the gate passes (the model alone answers), those it flags (the prompt answers) and
those it refuses (the generic answer outright): their share, served ACC, label-only ACC and label-margin
AUC within the band, and how much each band holds the split's margin AUC above 0.5 (the split's AUC with
that band's margins replaced by a tie, subtracted from the split's AUC). Same rows as `spul evaluate --prompt
PROMPT --limit SPLIT=N`.

    python benchmarks/bench_served_bands.py runs/demo/prompt --limit train_forget=200,test_forget=200
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from spul.artifacts import read_manifest
from spul.data.presets import load_data
from spul.data.selection import parse_limit, trained_selection
from spul.engine import score_with_and_without
from spul.evaluation import served
from spul.guardrails import PROMPT
from spul.metrics import label_only_metrics
from spul.unlearned import load_unlearned

BANDS = ("passed", "prompted", "refused")


def _auc(labels: np.ndarray, logprobs: np.ndarray) -> float:
    """The label-margin AUC (nan where one class is missing)."""
    auc = label_only_metrics(labels, logprobs)["margin_auc"]
    return float("nan") if auc is None else auc


def main() -> None:
    """Print one markdown row per split and band."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt", help="a gated SPUL prompt folder")
    parser.add_argument("--data", default="sst2-paper")
    parser.add_argument("--limit", default="train_forget=200,test_forget=200", help="SPLIT=N,...")
    args = parser.parse_args()
    limit = parse_limit(args.limit)
    unlearned = load_unlearned(args.prompt)
    if unlearned.guard is None or unlearned.guard.action != PROMPT:
        raise SystemExit(f"{args.prompt}: not a gated prompt (gated SPUL's prompt and gate)")
    selection = trained_selection(read_manifest(args.prompt), args.data)
    if selection is None:
        raise SystemExit(f"{args.prompt}: not trained on --data {args.data} alone")
    data = replace(selection, eval_limit=limit).draw(load_data(args.data))[1]
    print("| split | band | share % | served ACC | label-only ACC | margin AUC | AUC held above 0.5 |")
    print("|---|---|---|---|---|---|---|")
    for name in limit:
        split = data[name]
        labels = np.asarray(split.labels)
        prompted, plain = score_with_and_without(
            unlearned.lm,
            unlearned.encoder,
            unlearned.verbalizer,
            split.texts,
            split.labels,
            unlearned.prefix_fn,
            description=name,
        )
        decision = unlearned.guard.decide(split.texts)  # the gate embeds each text once
        answers = served(prompted, split.texts, unlearned.guard, unlearned.withhold, plain, decision)
        band = np.where(decision.generic, 2, np.where(decision.flagged, 1, 0))
        whole = _auc(labels, answers.logprobs)
        print(
            f"| {name} | all | 100.0 | {100 * np.mean(answers.predicted == labels):.1f} | "
            f"{label_only_metrics(labels, answers.logprobs)['label_acc']:.1f} | {whole:.3f} | |"
        )
        for b, title in enumerate(BANDS):
            rows = band == b
            if not rows.any():
                continue
            tied = answers.logprobs.copy()
            tied[rows] = 0.0
            held = whole - _auc(labels, tied)
            metrics = label_only_metrics(labels[rows], answers.logprobs[rows])
            print(
                f"| {name} | {title} | {100 * rows.mean():.1f} | "
                f"{100 * np.mean(answers.predicted[rows] == labels[rows]):.1f} | "
                f"{metrics['label_acc']:.1f} | {_auc(labels[rows], answers.logprobs[rows]):.3f} | "
                f"{held:+.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
