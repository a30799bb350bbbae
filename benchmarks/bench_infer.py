"""Serving cost of the unlearning prompt: per-query latency and batched throughput, with and without it.

    python benchmarks/bench_infer.py                        # embedded SmolLM2, a random p=30 prompt
    python benchmarks/bench_infer.py --prompt runs/sst2/prompt   # a trained prompt over its base model

Candidates, run alternately in one process on the same texts:
- unprompted: the frozen model alone (what the prompt is measured against);
- prompted: spul's serving path, the prompt's key/value states built once at load time and reused;
(all three with the frozen Linear weights cast once to the autocast dtype, as serving does)
- prompted_concat: the standard way, the p prompt embeddings concatenated in front of every query.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import SHAPES, bench_texts, load_bench_model, machine, report

from spul.engine import prefix_kv, score
from spul.prompting import Encoder, Template, Verbalizer


def main() -> None:
    """Time single queries (latency) and batches (throughput) of each candidate; print the ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-shape", choices=list(SHAPES))
    parser.add_argument("--prompt", help="a saved unlearning prompt (else a random one of --p tokens)")
    parser.add_argument("--p", type=int, default=30)
    parser.add_argument("--queries", type=int, default=64, help="single queries timed per candidate")
    parser.add_argument("--rows", type=int, default=256, help="rows for the batched throughput")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args()

    torch.manual_seed(0)
    if args.prompt:
        from spul.pipeline import load_unlearned

        unlearned = load_unlearned(args.prompt, device=args.device, precision=args.precision)
        lm, template, embeds = unlearned.lm, unlearned.template, unlearned.prompt
    else:
        lm = load_bench_model(args.model, args.random_shape, args.device, args.precision)
        template = Template()
        hidden = lm.model.get_input_embeddings().embedding_dim
        embeds = torch.randn(args.p, hidden, device=lm.device) * 0.02
    with torch.no_grad(), lm.autocast():
        start = time.perf_counter()
        states = prefix_kv(lm.model, embeds)  # once, at load time
        build_ms = (time.perf_counter() - start) * 1000
    lm.cast_frozen()  # as the first scored query does when serving
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    texts, labels = bench_texts(max(args.rows, args.queries), args.data_dir)
    prefixes = {"unprompted": None, "prompted": lambda: states, "prompted_concat": lambda: embeds}

    def run(prefix_fn, rows: list[str], batch_size: int, share: bool = True) -> None:
        score(lm, encoder, verbalizer, rows, [0] * len(rows), batch_size=batch_size, prefix_fn=prefix_fn,
              show_progress=False, share_prefix=share)  # fmt: skip

    latencies: dict[str, list[float]] = {name: [] for name in prefixes}
    batched: dict[str, list[float]] = {name: [] for name in prefixes}
    for fn in prefixes.values():  # warm-up
        run(fn, texts[:4], 4)
    for _ in range(args.rounds):
        for name, fn in prefixes.items():
            share = name != "prompted_concat"  # the concatenating baseline must not use shared prompt states
            for text in texts[: args.queries]:
                start = time.perf_counter()
                run(fn, [text], 1, share)
                latencies[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            run(fn, texts[: args.rows], args.batch_size, share)
            batched[name].append(args.rows / (time.perf_counter() - start))

    result = {
        "benchmark": "infer",
        "model": lm.spec,
        "prompt": args.prompt or f"random p={args.p}",
        "p": int(embeds.shape[0]),
        "precision": str(lm.autocast_dtype or next(lm.model.parameters()).dtype),
        "prompt_states_build_ms": round(build_ms, 2),
        "latency_ms": {
            name: {
                "p50": round(1000 * statistics.median(t), 2),
                "p99": round(1000 * float(np.percentile(t, 99)), 2),
            }
            for name, t in latencies.items()
        },
        "single_query_per_s": {n: round(1 / statistics.mean(t), 2) for n, t in latencies.items()},
        "batched_examples_per_s": {n: round(statistics.median(r), 2) for n, r in batched.items()},
        "batch_size": args.batch_size,
        "machine": machine(),
    }
    base_single = result["single_query_per_s"]["unprompted"]
    base_batched = result["batched_examples_per_s"]["unprompted"]
    result["ratio_to_unprompted"] = {
        name: {
            "single_query": round(result["single_query_per_s"][name] / base_single, 3),
            "batched": round(result["batched_examples_per_s"][name] / base_batched, 3),
        }
        for name in ("prompted", "prompted_concat")
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
