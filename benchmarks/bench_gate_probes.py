"""How often a saved gate flags queries under the audit's rewrites: whole texts, and with the sentence rule.

The gate alone (no language model): the share (%) of seeded test rows it flags, as written and under each
surface probe, scored as a whole-text gate and as a gate that also scores each sentence of a query
(`EmbeddingGate.sentences`). A forget query the gate misses goes to the model without the prompt.

    python benchmarks/bench_gate_probes.py runs/demo/prompt --rows 200
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from spul.audit.probes import apply_probe
from spul.data.presets import load_data
from spul.guardrails import EmbeddingGate, TextGate, get_embedder

PROBES = ("none", "injection_before", "injection_after", "template_imitation", "punctuation_added")


def main() -> None:
    """Print one markdown row per split and gate reading."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="gated prompt or gate artifact folder")
    parser.add_argument("--data", default="sst2-paper")
    parser.add_argument("--rows", type=int, default=200, help="seeded rows per test split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gate = EmbeddingGate.load(Path(args.folder))
    embed = get_embedder(gate.embedder_name)
    data = load_data(args.data)
    rng = np.random.default_rng(args.seed)
    print("| split | gate | " + " | ".join(PROBES) + " |\n" + "|---" * (2 + len(PROBES)) + "|")
    for split in ("test_forget", "test_retain"):
        texts = data[split].texts
        texts = [texts[i] for i in rng.choice(len(texts), min(args.rows, len(texts)), replace=False)]
        for sentences in (False, True):
            reading = TextGate(replace(gate, sentences=sentences), embed)
            shares = [
                100 * reading.flags(texts if p == "none" else apply_probe(p, texts)).mean() for p in PROBES
            ]
            name = "whole text + sentences" if sentences else "whole text"
            print(f"| {split} | {name} | " + " | ".join(f"{s:.1f}" for s in shares) + " |")


if __name__ == "__main__":
    main()
