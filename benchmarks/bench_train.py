"""SPUL training throughput: spul's step vs the standard way (peft forward, full logits, a KL copy).

    python benchmarks/bench_train.py                                   # embedded SmolLM2 on the CPU
    python benchmarks/bench_train.py --random-shape llama2-7b --device cuda   # paper scale, random weights

The standard way, as in the paper's public code: peft's own P-tuning forward (prompt prepended, right
padding), logits for every position, and the KL reference from a second, deep-copied model.
"""

from __future__ import annotations

import argparse
import copy
import resource

import torch
from common import alternate, bench_texts, load_bench_model, machine, report

from spul.methods import get_method
from spul.methods.losses import answer_kl, answer_nll
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import collate


def main() -> None:
    """Time a few optimizer steps of each candidate alternately; print examples/s and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-shape", choices=["llama2-7b", "smollm2-135m"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per timed call")
    parser.add_argument("--p", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data-dir")
    parser.add_argument("--skip-standard", action="store_true", help="only time spul (no second model copy)")
    parser.add_argument("--out")
    args = parser.parse_args()

    torch.manual_seed(0)
    lm = load_bench_model(args.model, args.random_shape, args.device, args.precision)
    n = args.batch_size * args.steps
    texts, labels = bench_texts(n, args.data_dir)
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    generic = Verbalizer.build(lm.tokenizer, ("neutral", "unknown"), template)
    method = get_method("spul")(lm, encoder, verbalizer, generic, num_virtual_tokens=args.p)
    is_forget = [i % 4 == 0 for i in range(n)]
    items = method.items(texts, labels, is_forget, seed=0)
    optimizer = torch.optim.AdamW(method.trainable().parameters(), lr=1e-4)

    def spul_steps() -> None:
        for s in range(args.steps):
            index = list(range(s * args.batch_size, (s + 1) * args.batch_size))
            loss, _ = method.loss(collate([items[i] for i in index], method, index))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    candidates = {"spul": spul_steps}
    if not args.skip_standard:
        reference = copy.deepcopy(lm.model)  # what the paper's code does for the KL term
        peft_model = method.peft
        prompts = [template.render(t) for t in texts]
        answers = [it.answer[0] for it in items]
        lm.tokenizer.padding_side = "right"

        def standard_steps() -> None:
            for s in range(args.steps):
                sl = slice(s * args.batch_size, (s + 1) * args.batch_size)
                enc = lm.tokenizer(prompts[sl], return_tensors="pt", padding=True).to(lm.device)
                last = enc.attention_mask.sum(1) - 1
                rows = torch.arange(len(last), device=lm.device)
                target = torch.tensor(answers[sl], device=lm.device).unsqueeze(1)
                forget = torch.tensor(is_forget[sl], device=lm.device)
                with lm.autocast():
                    logits = peft_model(**enc).logits  # [B, p + T, V]: every position
                    with torch.no_grad():
                        ref = reference(**enc).logits
                picked = logits[rows, last + args.p].unsqueeze(1)
                nll = answer_nll(picked, target)
                kl = answer_kl(picked[~forget], ref[rows, last].unsqueeze(1)[~forget], target[~forget])
                loss = nll[forget].mean() + nll[~forget].mean() + 0.5 * kl.mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        candidates["standard"] = standard_steps
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = alternate(candidates, args.rounds, lm.device)
    rates = {name: round(n / s, 2) for name, s in seconds.items()}
    result = {
        "benchmark": "train",
        "model": lm.spec,
        "batch_size": args.batch_size,
        "p": args.p,
        "precision": str(lm.autocast_dtype or next(lm.model.parameters()).dtype),
        "examples_per_s": rates,
        "machine": machine(),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    if "standard" in rates:
        result["speedup_vs_standard"] = round(rates["spul"] / rates["standard"], 2)
    if lm.device.type == "cuda":
        result["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    report(result, args.out)


if __name__ == "__main__":
    main()
