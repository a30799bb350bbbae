"""How often a saved gate flags queries under the audit's rewrites, by which pieces of a query it scores.

The gate alone (no language model): the share (%) of seeded test rows it flags, as written, under each
surface probe and with 5 random label-neutral words appended (where the audit's adaptive attack starts),
scored as a whole-text gate, a gate that also scores each sentence (`EmbeddingGate.sentences`) and one
that also scores runs of W words (`EmbeddingGate.window`). A forget query the gate misses goes to the
model without the prompt; a retain query it flags gets the prompt. A gate with a refusal threshold
(gated SPUL's `gate_refuse`) adds a row per split: the share it refuses (the generic answer outright), read
as saved.

    python benchmarks/bench_gate_probes.py runs/demo/prompt --rows 200 --windows 8,12,16
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from spul.audit.adaptive import neutral_vocabulary
from spul.audit.probes import apply_probe
from spul.data.presets import load_data
from spul.embedding_gate import EmbeddingGate
from spul.guardrails import TextGate, get_embedder

PROBES = ("none", "injection_before", "injection_after", "template_imitation", "punctuation_added")
APPENDED = "appended_words"


def _append_words(texts: list[str], vocabulary: list[str], words: int, seed: int) -> list[str]:
    """Each text with `words` words of the vocabulary appended (seeded)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(vocabulary), (len(texts), words))
    return [f"{t} {' '.join(vocabulary[w] for w in row)}" for t, row in zip(texts, picks, strict=True)]


def main() -> None:
    """Print one markdown row per split and gate reading."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="gated prompt or gate artifact folder")
    parser.add_argument("--data", default="sst2-paper")
    parser.add_argument("--rows", type=int, default=200, help="seeded rows per test split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", default="", help="comma-separated window sizes (words) to read with")
    parser.add_argument("--splits", default="test_forget,test_retain", help="comma-separated test splits")
    parser.add_argument("--words", type=int, default=5, help="words appended by the appended_words probe")
    args = parser.parse_args()
    gate = EmbeddingGate.load(Path(args.folder))
    embed = get_embedder(gate.embedder_name)
    data = load_data(args.data)
    train = data["train_retain"]
    vocabulary = neutral_vocabulary(train.texts, train.labels, 2000)
    readings = [("whole text", replace(gate, sentences=False, window=0))]
    readings.append(("+ sentences", replace(gate, sentences=True, window=0)))
    for w in (int(x) for x in args.windows.split(",") if x.strip()):
        readings.append((f"+ sentences + {w}-word runs", replace(gate, sentences=True, window=w)))
    columns = (*PROBES, APPENDED)
    print(f"{len(vocabulary)} label-neutral words for {APPENDED}")
    print("| split | gate | " + " | ".join(columns) + " |\n" + "|---" * (2 + len(columns)) + "|")
    for split in args.splits.split(","):
        texts = data[split].texts
        rng = np.random.default_rng([args.seed, len(texts)])  # one split's rows do not depend on the others
        texts = [texts[i] for i in rng.choice(len(texts), min(args.rows, len(texts)), replace=False)]
        probed = {p: texts if p == "none" else apply_probe(p, texts) for p in PROBES}
        probed[APPENDED] = _append_words(texts, vocabulary, args.words, args.seed)
        for name, reading in readings:
            flagger = TextGate(reading, embed)
            shares = [100 * flagger.flags(probed[p]).mean() for p in columns]
            print(f"| {split} | {name} | " + " | ".join(f"{s:.1f}" for s in shares) + " |", flush=True)
        if gate.refuse_threshold is not None:
            refusing = TextGate(gate, embed)
            shares = [100 * refusing.bands(probed[p])[1].mean() for p in columns]
            print(
                f"| {split} | refused, as saved | " + " | ".join(f"{s:.1f}" for s in shares) + " |",
                flush=True,
            )


if __name__ == "__main__":
    main()
