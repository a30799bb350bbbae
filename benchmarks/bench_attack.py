"""The audit's adaptive attack alone, on the unlearned model (issue 14): what `spul audit --attack-rows N`
reports for it, without the membership, probe and fine-tuned-reference work around it.

Same rows (the audit's seeded subset of each forget split, among its `--limit` rows), same vocabulary, same
search and seed as `spul audit`, so its figures equal the audit's "unlearned" rows; for a guarded artifact
it also says how many recovered rows got past the guard (a query its gate did not flag). About 13 minutes
per 100 rows at 200 queries on the full-SST-2 gated prompt on 2 CPU cores.

    SPUL_DATA_DIR=../shared/data python benchmarks/bench_attack.py --prompt runs/full/prompt-f075r95e8 \
        --limit 100 --rows 100 --budget 200 --splits test_forget --out runs/attack.json
"""

from __future__ import annotations

import argparse
import time

from common import machine, report

from spul.audit.adaptive import AttackSettings
from spul.audit.report import attack_table
from spul.cli.evaluate import audited_rows
from spul.data.selection import parse_limit
from spul.data.splits import FORGET_SPLITS
from spul.pipeline import load_unlearned


def main() -> None:
    """Attack the saved prompt's unlearned model on the chosen forget splits and print the outcome."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--data", default="sst2-paper")
    parser.add_argument("--limit", default="100", help="as `spul audit --limit` (the rows it samples from)")
    parser.add_argument("--rows", type=int, default=100, help="as `spul audit --attack-rows`")
    parser.add_argument("--budget", type=int, default=200, help="as `spul audit --attack-budget`")
    parser.add_argument("--splits", default=",".join(FORGET_SPLITS))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    splits = tuple(args.splits.split(","))
    if unknown := set(splits) - set(FORGET_SPLITS):
        parser.error(
            f"--splits: {', '.join(sorted(unknown))} is not a forget split ({', '.join(FORGET_SPLITS)})"
        )
    settings = AttackSettings(rows=args.rows, budget=args.budget)
    data, _ = audited_rows(args.prompt, args.data, None, parse_limit(args.limit), args.seed, None)
    unlearned = load_unlearned(args.prompt)
    start = time.perf_counter()
    attack = attack_table(
        unlearned, data, settings, args.batch_size, args.seed, models=("unlearned",), splits=splits
    )
    result = {
        "prompt": args.prompt,
        "limit": args.limit,
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine(),
    } | attack
    report(result, args.out)


if __name__ == "__main__":
    main()
