"""Time to target: how many seconds and optimizer steps each SPUL recipe needs to forget.

On one fine-tuned model, each recipe trains a soft prompt while fixed held rows (trained train-retain and
train-forget rows, unseen test-retain and test-forget rows) are evaluated every N steps; the run stops when
train-forget and test-forget ACC are <= 25 % and both retain ACCs are within 3 points of the fine-tuned
model. The recipes run one after another in this one process, on the same rows, and the ratio of their
training seconds to target is printed (checking time excluded). Variants (ablations) are recipes with
overrides: `--variant name:recipe:key=value,key=value` (method options, training fields, or
`monitor_every=N` to check that run every N steps instead of `--every`).

    python benchmarks/bench_forgetting.py --adapter runs/demo/finetuned \
        --limit train_retain=300,train_forget=200 --held 100 --every 10 --recipes fast,paper
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from spul.data import load_data
from spul.evaluation import evaluate
from spul.methods import get_method
from spul.methods.recipes import RECIPES, recipe_settings
from spul.models import load_model
from spul.prompting import Encoder, Template, Verbalizer
from spul.target import Target, TargetMonitor
from spul.training import train

SPLITS = ("train_retain", "train_forget", "test_retain", "test_forget")


def parse_value(text: str):
    """An option value from the command line: int, float, bool, None or text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_variant(text: str) -> tuple[str, str, dict]:
    """`name:recipe:key=value,...` -> (name, recipe, overrides)."""
    name, recipe, *rest = text.split(":")
    overrides = {}
    for part in rest[0].split(",") if rest and rest[0] else []:
        key, value = part.split("=", 1)
        overrides[key] = parse_value(value)
    return name, recipe, overrides


def main() -> None:
    """Run every recipe / variant to the target (or its budget) and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", required=True, help="the fine-tuned LoRA adapter (spul finetune --out)")
    ap.add_argument("--data", default="sst2-paper")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--limit", default="train_retain=300,train_forget=200")
    ap.add_argument("--held", type=int, default=100, help="held rows per split")
    ap.add_argument("--every", type=int, default=10, help="optimizer steps between target checks")
    ap.add_argument("--recipes", default="fast,paper", help="recipes to run, comma-separated")
    ap.add_argument("--variant", action="append", default=[], help="name:recipe:key=value,... (repeatable)")
    ap.add_argument("--set", default="", help="key=value,... for every run (e.g. text_cache_mb=6144)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap every run's steps (else its budget)")
    ap.add_argument("--max-seconds", type=float, default=None, help="cap every run's training seconds")
    ap.add_argument(
        "--ratio-goal",
        type=float,
        default=None,
        help="once a run reaches the target in T s, cap the later runs at this many times T (enough to "
        "show a ratio of at least this; e.g. 10)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_forgetting.json")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    from spul.data.selection import parse_limit  # one parser for --limit

    full = load_data(args.data, data_dir=args.data_dir, seed=args.seed)
    training = full.sample(limit=parse_limit(args.limit), seed=args.seed)
    held_train = training.sample(limit=args.held, seed=args.seed)
    held_test = full.sample(limit=args.held, seed=args.seed)
    held = replace(
        training,
        splits={s: (held_train if s.startswith("train") else held_test)[s] for s in SPLITS},
        warnings=[],
    )
    lm = load_model(args.model, adapter=args.adapter)
    template = Template()
    reference = evaluate(lm, held, template=template, show_progress=False)
    print("fine-tuned:", {s: round(m["acc"], 1) for s, m in reference.items()}, flush=True)
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, training.label_words, template)
    generic = Verbalizer.build(lm.tokenizer, training.generic_words, template)
    target = Target()
    forget, retain = training.train_forget, training.train_retain

    runs = [(name, name, {}) for name in args.recipes.split(",") if name] + [
        parse_variant(v) for v in args.variant
    ]
    results = []
    max_seconds = args.max_seconds
    for name, recipe, overrides in runs:
        if recipe not in RECIPES:
            raise SystemExit(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        overrides = parse_variant(f"all:{recipe}:{args.set}")[2] | overrides
        options, config = recipe_settings(recipe, overrides, seed=args.seed)
        torch.manual_seed(args.seed)
        method = get_method("spul")(lm, encoder, verbalizer, generic, **options)
        items = method.items(
            retain.texts + forget.texts,
            retain.labels + forget.labels,
            [False] * len(retain) + [True] * len(forget),
            args.seed,
        )
        # gated SPUL (gate=true): the held rows are scored as served, the prompt only where the gate flags
        monitor = TargetMonitor(
            lm,
            held,
            template,
            target,
            reference,
            SPLITS,
            prefix_fn=method.prefix_fn(),
            guard=method.inference_guard(),
        )

        def check(step: int, monitor=monitor, name=name, max_seconds=max_seconds) -> bool:
            reached = monitor(step)
            last = monitor.checks[-1]
            print(f"  {name} step {step} train {last['train_s']:.0f} s acc {last['acc']}", flush=True)
            over_time = max_seconds is not None and last["train_s"] >= max_seconds
            return reached or over_time or (args.max_steps is not None and step >= args.max_steps)

        # a variant may check more rarely (monitor_every=N: e.g. a slow recipe's long run)
        config = replace(config, monitor_every=config.monitor_every or args.every, checkpoint_every=10**9)
        began = time.perf_counter()
        result = train(method, items, config, monitor=check, show_progress=False)
        if not monitor.checks or monitor.checks[-1]["step"] != result.steps:
            check(result.steps)  # the prompt the recipe returns (e.g. stopped by its own training check)
        wall = time.perf_counter() - began
        reached = [c for c in monitor.checks if c["reached"]]
        row = {
            "name": name,
            "recipe": recipe,
            "overrides": overrides,
            "options": options,
            "training": vars(config),
            "reached": bool(reached),
            "steps_to_target": reached[0]["step"] if reached else None,
            "seconds_to_target": reached[0]["train_s"] if reached else None,
            "steps_run": result.steps,
            "train_s_run": monitor.checks[-1]["train_s"] if monitor.checks else round(wall, 2),
            "wall_s": round(wall, 2),
            "checks": monitor.checks,
        }
        results.append(row)
        if args.ratio_goal and row["reached"] and not any(r["reached"] for r in results[:-1]):
            cap = args.ratio_goal * row["seconds_to_target"]
            max_seconds = cap if max_seconds is None else min(max_seconds, cap)
            print(f"  later runs capped at {max_seconds:.0f} training s (--ratio-goal)", flush=True)
        print(
            json.dumps(
                {
                    k: row[k]
                    for k in (
                        "name",
                        "reached",
                        "steps_to_target",
                        "seconds_to_target",
                        "steps_run",
                        "train_s_run",
                    )
                }
            ),
            flush=True,
        )
        del method  # the frozen model is shared by every run; only the prompt encoder goes

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"reference": reference, "runs": results}, indent=1))
    print("\n| run | reached | steps to target | training s to target | steps run |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['name']} | {r['reached']} | {r['steps_to_target']} | {r['seconds_to_target']} "
            f"| {r['steps_run']} |"
        )
    timed = {r["name"]: r for r in results}
    if "fast" in timed and "paper" in timed:
        fast, paper = timed["fast"], timed["paper"]
        if fast["reached"] and paper["reached"]:
            print(f"\nratio paper / fast: {paper['seconds_to_target'] / fast['seconds_to_target']:.1f}x")
        elif fast["reached"]:
            print(
                f"\nthe paper's recipe did not reach the target in {paper['train_s_run']:.0f} s "
                f"({paper['steps_run']} steps); fast reached it in {fast['seconds_to_target']:.0f} s: "
                f"ratio > {paper['train_s_run'] / fast['seconds_to_target']:.1f}x"
            )


if __name__ == "__main__":
    main()
