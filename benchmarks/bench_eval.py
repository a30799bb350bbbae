"""Evaluation throughput of a prompted model: spul's engine vs the standard way.

python benchmarks/bench_eval.py                          # embedded SmolLM2, SST-2 rows, CPU, p=30 prompt
python benchmarks/bench_eval.py --prompt-tokens 0        # the untouched model (no prompt)
python benchmarks/bench_eval.py --random-shape llama2-7b --device cuda   # paper scale, random weights

The standard way (the comparison point): peft's own P-tuning forward, which concatenates the prompt in front
of every right-padded example, with logits for every position, batches in the given order; in fp32 (the
HF Trainer default on a CPU) and, where the CPU has it, under the same bf16 autocast spul uses.
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import SHAPES, alternate, bench_texts, load_bench_model, machine, report

from spul.engine import score
from spul.prompting import Encoder, Template, Verbalizer


def standard_forward(lm, model, p: int, texts: list[str], batch_size: int, autocast: bool) -> None:
    """The straightforward way: right-padded batches in given order, logits for every position."""
    template = Template()
    prompts = [template.render(t) for t in texts]
    lm.tokenizer.padding_side = "right"
    for i in range(0, len(prompts), batch_size):
        enc = lm.tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True).to(lm.device)
        ctx = lm.autocast() if autocast else torch.autocast(lm.device.type, enabled=False)
        with torch.no_grad(), ctx:
            logits = model(**enc).logits  # [B, p + T, V]
        last = enc.attention_mask.sum(1) - 1 + p
        logits[torch.arange(len(last)), last].argmax(-1)


def main() -> None:
    """Parse arguments, run both candidates alternately, print examples/s and the ratio."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-shape", choices=list(SHAPES))
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=30, help="soft prompt length p (0: none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    args = parser.parse_args()

    torch.manual_seed(0)
    lm = load_bench_model(args.model, args.random_shape, args.device, args.precision)
    texts, labels = bench_texts(args.rows, args.data_dir)
    template = Template()
    encoder = Encoder(lm.tokenizer, template)
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    p = args.prompt_tokens
    model, prefix = lm.model, None
    if p:
        # One P-tuning prompt (peft, untrained) used by every candidate.
        from peft import PromptEncoderConfig, TaskType, get_peft_model

        hidden = lm.model.get_input_embeddings().embedding_dim
        config = PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=p, encoder_hidden_size=128, token_dim=hidden
        )
        model = get_peft_model(lm.model, config).eval()
        model.prompt_encoder.to(lm.device)
        with torch.no_grad():
            prefix = model.get_prompt(batch_size=1)[0]

    def engine():
        score(
            lm,
            encoder,
            verbalizer,
            texts,
            labels,
            batch_size=args.batch_size,
            show_progress=False,
            prefix_fn=(lambda: prefix) if prefix is not None else None,
        )

    if lm.autocast_dtype is not None:
        # spul's engine stores the frozen weights in the autocast dtype at its first call
        # (`LoadedModel.cast_frozen`); the standard way keeps them as loaded: its own copy
        model = copy.deepcopy(model)
    candidates = {
        "spul_engine": engine,
        "standard_fp32": lambda: standard_forward(lm, model, p, texts, args.batch_size, autocast=False),
    }
    if lm.autocast_dtype is not None:
        candidates["standard_autocast"] = lambda: standard_forward(
            lm, model, p, texts, args.batch_size, autocast=True
        )
    seconds = alternate(candidates, args.rounds, lm.device)
    rates = {name: round(len(texts) / s, 2) for name, s in seconds.items()}
    report(
        {
            "benchmark": "eval",
            "model": lm.spec,
            "rows": len(texts),
            "batch_size": args.batch_size,
            "prompt_tokens": args.prompt_tokens,
            "precision": str(lm.autocast_dtype or next(lm.model.parameters()).dtype),
            "examples_per_s": rates,
            "speedup_vs_standard": {
                n: round(rates["spul_engine"] / r, 2) for n, r in rates.items() if n != "spul_engine"
            },
            "machine": machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
