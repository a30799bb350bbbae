"""PyTorch's attention kernels for a training step: flash vs math, forward + backward, SmolLM2's heads.

    python benchmarks/bench_attention.py [--out results.json]

Why `LoadedModel.training_attention` picks the math kernel on a CPU in bf16 for short rows: shapes of
SmolLM2-135M's attention (9 heads of 64) over SST-2-sized rows, the suffix prompt's 14 positions over a
cached text, a full row (LoRA fine-tuning) and long rows; milliseconds per forward + backward, median of
alternated repeats.
"""

from __future__ import annotations

import argparse

import torch
from common import alternate, machine, report
from torch.nn.attention import SDPBackend, sdpa_kernel

HEADS, HEAD_DIM = 9, 64
# (rows, query positions, key positions, keys and values need grad too)
SHAPES = {
    "suffix prompt (16 rows, 14 over 60)": (16, 14, 60, False),
    "full rows (16 rows, 45)": (16, 45, 45, True),
    "full rows (32 rows, 50)": (32, 50, 50, True),
    "long rows (8 rows, 200)": (8, 200, 200, True),
    "long rows (8 rows, 512)": (8, 512, 512, True),
}
KERNELS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def step_fn(kernel: SDPBackend, dtype: torch.dtype, rows: int, q: int, k: int, kv_grad: bool):
    """One causal attention forward + backward on random inputs, under `kernel`."""
    torch.manual_seed(0)
    query = torch.randn(rows, HEADS, q, HEAD_DIM, dtype=dtype, requires_grad=True)
    keys, values = (torch.randn(rows, HEADS, k, HEAD_DIM, dtype=dtype, requires_grad=kv_grad) for _ in "kv")
    mask = torch.ones(rows, 1, q, k, dtype=torch.bool).tril(k - q)

    def step() -> None:
        with sdpa_kernel([kernel]):
            out = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        out.sum().backward()

    return step


def main() -> None:
    """Print and save the kernel table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    results = []
    for dtype in (torch.bfloat16, torch.float32):
        for name, shape in SHAPES.items():
            fns = {k: step_fn(kernel, dtype, *shape) for k, kernel in KERNELS.items()}
            times = alternate(fns, args.repeats, cpu)
            row = {"dtype": str(dtype).removeprefix("torch."), "shape": name}
            row |= {f"{k}_ms": round(1000 * t, 2) for k, t in times.items()}
            results.append(row)
            flash, math = row["flash_ms"], row["math_ms"]
            print(f"{row['dtype']:9} {name:36} flash {flash:8.2f} ms, math {math:8.2f} ms")
    report({"machine": machine(), "torch": torch.__version__, "results": results}, args.out)


if __name__ == "__main__":
    main()
