"""Lever ablation for suffix-prompt SPUL recipes, quickly: the text states of the training rows and of
100 held rows per split are computed once, then each variant trains a prompt and checks the held rows
every `every` steps over the cached text (nearly free). Needs the demo's fine-tuned adapter
(runs/demo/finetuned). One seed, 100 held rows per split: exploratory, noise-sized differences.

    python benchmarks/bench_levers.py "train_retain=300,train_forget=200" \\
        "p10:num_virtual_tokens=10,lr=2e-3,steps=100" "a3:num_virtual_tokens=10,alpha=3,lr=2e-3,steps=100"

A variant is `name:key=value,...` with `lr` and `steps` required, optional `batch`, `share` (forget
share), `every`, `wd`, `clip`; other keys are SPUL options (the suffix position is always on). Each check
prints held ACC per split and, on retain splits, how many rows got a generic answer (`_other`).
"""

from __future__ import annotations

import sys
import time

import torch
from bench_forgetting import parse_value  # the benchmarks' own folder is on sys.path
from transformers import get_cosine_schedule_with_warmup

from spul.data import load_data
from spul.data.selection import parse_limit
from spul.methods import get_method
from spul.models import load_model
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import BatchPlan, TrainConfig, collate

TRAIN_KEYS = {"batch": int, "share": float, "every": int, "wd": float, "clip": float}
BASE = {"prompt_position": "suffix", "forget_loss": "set", "text_cache_mb": 100_000}


class Lab:
    """The fine-tuned model, the training rows and the held rows, with every text state cached once."""

    def __init__(self, limit: str):
        torch.manual_seed(0)
        full = load_data("sst2-paper", seed=0)
        training = full.sample(limit=parse_limit(limit), seed=0)
        held_test, held_train = full.sample(limit=100, seed=0), training.sample(limit=100, seed=0)
        self.lm = load_model("smollm2-135m", adapter="runs/demo/finetuned")
        template = Template()
        self.words = (
            Encoder(self.lm.tokenizer, template),
            Verbalizer.build(self.lm.tokenizer, training.label_words, template),
            Verbalizer.build(self.lm.tokenizer, training.generic_words, template),
        )
        forget, retain = training.train_forget, training.train_retain
        probe = self.method({})
        flags = [False] * len(retain) + [True] * len(forget)
        self.items = probe.items(retain.texts + forget.texts, retain.labels + forget.labels, flags, 0)
        self.held: dict[str, tuple[int, list[int]]] = {}
        everything = list(self.items)
        for name, split in (
            ("train_retain", held_train.train_retain),
            ("train_forget", held_train.train_forget),
            ("test_retain", held_test.test_retain),
            ("test_forget", held_test.test_forget),
        ):
            self.held[name] = (len(everything), split.labels)
            everything += probe.items(split.texts, split.labels, [False] * len(split), 0)
        began = time.time()
        probe.prepare(everything)
        print(f"text states of {len(everything)} rows: {time.time() - began:.0f} s", flush=True)
        self.everything, self.cache = everything, probe.text_cache
        self.label_ids = torch.tensor([v[0] for v in self.words[1].token_ids])

    def method(self, options: dict):
        """A SPUL method over the cached text (suffix prompt)."""
        method = get_method("spul")(self.lm, *self.words, **(BASE | options))
        if hasattr(self, "cache"):
            method.text_cache = self.cache
        return method

    @torch.no_grad()
    def held_acc(self, method) -> dict[str, float]:
        """ACC per held split (and generic answers on the retain ones)."""
        out = {}
        for name, (start, labels) in self.held.items():
            rows = list(range(start, start + len(labels)))
            right = generic = 0
            for b in range(0, len(rows), 50):
                chunk = rows[b : b + 50]
                batch = collate([self.everything[i] for i in chunk], method, chunk).batch
                top = method.logits_pair(batch)[0][:, -1].argmax(-1)
                predicted = torch.where(
                    top == self.label_ids[1], 1, torch.where(top == self.label_ids[0], 0, -1)
                )
                right += (predicted == torch.tensor(labels[b : b + 50])).sum().item()
                generic += (predicted == -1).sum().item()
            out[name] = round(100 * right / len(labels), 1)
            if "retain" in name:
                out[name + "_other"] = generic
        return out

    def run(
        self,
        name: str,
        options: dict,
        lr: float,
        steps: int,
        batch=16,
        share=0.5,
        every=20,
        wd=0.001,
        clip=1.0,
    ):
        """Train one variant for `steps` steps (cosine schedule over them), printing the held checks."""
        torch.manual_seed(0)
        method = self.method(options)
        params = [p for p in method.trainable().parameters() if p.requires_grad]
        plan = BatchPlan(self.items, TrainConfig(batch_size=batch, forget_share=share, epochs=100, seed=0))
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
        schedule = get_cosine_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
        began = time.time()
        method.trainable().train()
        for step in range(1, steps + 1):
            rows = plan.rows(step - 1)
            loss, terms = method.loss(collate([self.items[i] for i in rows], method, rows))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            schedule.step()
            if step % every == 0 or step == steps:
                method.trainable().eval()
                acc = self.held_acc(method)
                method.trainable().train()
                losses = f"L_f {terms['L_f']:.2f} L_r {terms['L_r']:.2f}"
                print(f"{name} step {step} {time.time() - began:.0f}s {acc} {losses}", flush=True)


def main() -> None:
    """Build the lab once, then run each variant given on the command line."""
    lab = Lab(sys.argv[1])
    for spec in sys.argv[2:]:
        name, rest = spec.split(":", 1)
        given = {k: v for k, v in (part.split("=", 1) for part in rest.split(","))}
        lr, steps = float(given.pop("lr")), int(given.pop("steps"))
        train = {k: TRAIN_KEYS[k](given.pop(k)) for k in list(given) if k in TRAIN_KEYS}
        lab.run(name, {k: parse_value(v) for k, v in given.items()}, lr, steps, **train)


if __name__ == "__main__":
    main()
