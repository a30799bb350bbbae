#!/usr/bin/env bash
# One short run on a lent GPU machine: CUDA tests on tiny models, then paper-scale throughput on random
# LLaMA-2-7B-shaped weights. Results go to $OUT (default ./gpu-out). Pure-Python wheels that the GPU
# machine may lack are carried in .gpu-wheels/ (pip download --no-deps typer rich click ... -d .gpu-wheels).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/tests PYTHONWARNINGS=ignore
{
  python -V; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python -m pip list 2>/dev/null | grep -i -E "^(torch|transformers|peft|accelerate|pandas|typer|rich|platformdirs|safetensors|scikit-learn|bitsandbytes) "
  ls .gpu-wheels >/dev/null 2>&1 && python -m pip install -q --no-deps --no-index --find-links .gpu-wheels \
    typer rich click shellingham markdown-it-py mdurl pygments platformdirs annotated-doc 2>&1 | tail -2
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout 200 python -m pytest tests -q -p no:cacheprovider -m "not integration" > "$OUT/pytest.txt" 2>&1
tail -8 "$OUT/pytest.txt"
for p in 0 30; do
  timeout 100 python benchmarks/bench_eval.py --random-shape llama2-7b --device cuda --rows 512 --batch-size 32 \
    --prompt-tokens $p --rounds 3 --out "$OUT/bench_eval_7b_p$p.json" > "$OUT/bench_eval_p$p.log" 2>&1
  grep -A3 examples_per_s "$OUT/bench_eval_p$p.log"
done
timeout 150 python benchmarks/bench_train.py --random-shape llama2-7b --device cuda --batch-size 32 --steps 2 \
  --rounds 3 --out "$OUT/bench_train_7b.json" > "$OUT/bench_train.log" 2>&1; tail -22 "$OUT/bench_train.log"
