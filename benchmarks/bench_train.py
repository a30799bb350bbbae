"""SPUL training throughput and memory: spul's training loop vs the standard way, same model, data, settings.

    python benchmarks/bench_train.py                                   # embedded SmolLM2 on the CPU
    python benchmarks/bench_train.py --random-shape llama2-7b --device cuda   # paper scale, random weights

The comparison point is the standard way, as in the paper's public code: a HuggingFace `Trainer` over peft's
own P-tuning model (prompt concatenated in front of each right-padded example), logits for every position,
and the KL reference from a second, deep-copied model; fp32 (the Trainer's default on a CPU) and, where the
CPU has native bf16, with `bf16=True`. spul runs its own loop (`spul.training.train`): shared prompt
key/value states, the LM head at the answer position only, the reference recomputed without a copy.
Both use the same hyperparameters: AdamW, cosine schedule with 10% warmup, clipping, alpha=1, beta=0.5.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import subprocess
import sys
import tempfile

import torch
from common import SHAPES, PeakMemory, alternate, bench_texts, load_bench_model, machine, matmul_flops, report

from spul.methods import get_method
from spul.methods.losses import answer_kl, answer_nll, masked_mean
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig, train


def standard_trainer(method, model, reference, texts, items, is_forget, args, bf16: bool):
    """A HF Trainer computing the SPUL loss the straightforward way (built once, `.train()` per call)."""
    from transformers import Trainer, TrainingArguments

    tokenizer = method.lm.tokenizer
    template = method.encoder.template
    limit = method.encoder.max_length  # long reviews: the same token budget as spul's encoder

    def ids(text: str) -> list[int]:
        return tokenizer(text, truncation=True, max_length=limit).input_ids

    rows = [
        {"input_ids": ids(template.render(t)), "target": it.answer[0], "is_forget": f}
        for t, it, f in zip(texts, items, is_forget, strict=True)
    ]

    def collate(features):
        tokenizer.padding_side = "right"
        enc = tokenizer.pad([{"input_ids": f["input_ids"]} for f in features], return_tensors="pt")
        enc["target"] = torch.tensor([f["target"] for f in features])
        enc["is_forget"] = torch.tensor([f["is_forget"] for f in features])
        return enc

    class SpulLossTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            target, forget = inputs.pop("target"), inputs.pop("is_forget")
            logits = model(**inputs).logits  # [B, p + T, V]: every position
            with torch.no_grad():
                ref = reference(**inputs).logits  # the second model copy, [B, T, V]
            last = inputs["attention_mask"].sum(1) - 1
            batch_rows = torch.arange(len(last), device=last.device)
            picked = logits[batch_rows, last + args.p].unsqueeze(1)
            nll = answer_nll(picked, target.unsqueeze(1))
            retain = ~forget
            kl = answer_kl(picked[retain], ref[batch_rows, last].unsqueeze(1)[retain], target[retain, None])
            return masked_mean(nll, forget) + masked_mean(nll, retain) + 0.5 * kl.mean()

    training_args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="bench-train-"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1,
        learning_rate=1e-3,
        weight_decay=0.001,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a float below 1 is a ratio of the total steps
        max_grad_norm=1.0,
        bf16=bf16,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=method.lm.device.type == "cpu",
        seed=0,
    )
    return SpulLossTrainer(model=model, args=training_args, train_dataset=rows, data_collator=collate)


def peak_memory(name: str) -> float:
    """Peak memory one candidate adds (model copy included), measured in a fresh process."""
    command = [sys.executable, __file__, *sys.argv[1:], "--only", name]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])[name]


def main() -> None:
    """Time whole training runs of each candidate alternately; print examples/s, ratios, peak memory."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-shape", choices=list(SHAPES))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per timed run")
    parser.add_argument("--p", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", choices=["sst2", "imdb"], default="sst2")
    parser.add_argument("--device")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data-dir")
    parser.add_argument("--skip-standard", action="store_true", help="only time spul (no second model copy)")
    parser.add_argument("--out")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # internal: one candidate's peak memory
    args = parser.parse_args()

    torch.manual_seed(0)
    lm = load_bench_model(args.model, args.random_shape, args.device, args.precision)
    n = args.batch_size * args.steps
    texts, labels = bench_texts(n, args.data_dir, args.texts)
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    generic = Verbalizer.build(lm.tokenizer, ("neutral", "unknown"), template)
    # spul's method stores the frozen weights in the autocast dtype (`LoadedModel.cast_frozen`); the
    # standard way keeps them as loaded: its model and reference copy come from this copy taken before
    pristine = None if args.skip_standard or args.only == "spul" else copy.deepcopy(lm.model)
    method = get_method("spul")(lm, encoder, verbalizer, generic, num_virtual_tokens=args.p)
    is_forget = [i % 4 == 0 for i in range(n)]
    items = method.items(texts, labels, is_forget, seed=0)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=1e-3, max_grad_norm=1.0)

    def spul_run() -> None:
        train(method, items, config, show_progress=False)

    @functools.cache
    def reference_model():
        return copy.deepcopy(pristine)  # what the paper's code does for the KL term (one, shared)

    @functools.cache
    def standard_model():
        """The same P-tuning prompt over the weights as loaded (peft's own model)."""
        from peft import get_peft_model

        model = get_peft_model(pristine, copy.deepcopy(method.peft.peft_config["default"]))
        model.prompt_encoder.to(lm.device)
        return model

    def standard(bf16: bool):
        reference, model = reference_model(), standard_model()
        return standard_trainer(method, model, reference, texts, items, is_forget, args, bf16).train

    builders = {"spul": lambda: spul_run}
    if not args.skip_standard:
        builders["standard_fp32"] = lambda: standard(False)
        if lm.autocast_dtype == torch.bfloat16 or lm.device.type == "cuda":
            builders["standard_bf16"] = lambda: standard(True)
    if args.only:  # a fresh process per candidate, so none inherits another's allocations
        memory = PeakMemory(lm.device)
        with memory.track(args.only):
            builders[args.only]()()
        print(json.dumps(memory.peaks()))
        return
    candidates = {name: build() for name, build in builders.items()}
    seconds = alternate(candidates, args.rounds, lm.device)
    rates = {name: round(n / s, 2) for name, s in seconds.items()}
    tokens = sum(len(it.prompt) + 1 for it in items) / n
    params = sum(p.numel() for p in lm.model.parameters())
    peak_flops = matmul_flops(lm.device, lm.autocast_dtype or next(lm.model.parameters()).dtype)
    # Model FLOPs of spul's step: forward + backward (3x) over text tokens, plus the no-grad reference
    # forward on the retain rows (1x); prompt tokens and attention are left out (small at these lengths).
    flops_per_example = 2 * params * tokens * (3 + 0.75)
    result = {
        "benchmark": "train",
        "model": lm.spec,
        "texts": args.texts,
        "mean_prompt_tokens": round(tokens, 1),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "p": args.p,
        "precision": str(lm.autocast_dtype or next(lm.model.parameters()).dtype),
        "examples_per_s": rates,
        "peak_memory_gb": {name: peak_memory(name) for name in candidates},
        "spul_mfu": round(rates["spul"] * flops_per_example / peak_flops, 4),
        "matmul_tflops": round(peak_flops / 1e12, 3),
        "machine": machine(),
    }
    result["speedup_vs_standard"] = {
        name: round(rates["spul"] / r, 2) for name, r in rates.items() if name != "spul"
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
