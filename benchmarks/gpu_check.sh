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
timeout 150 python -m pytest tests/test_cuda.py tests/test_engine.py tests/test_training.py -q -x -p no:cacheprovider \
  > "$OUT/pytest.txt" 2>&1; tail -5 "$OUT/pytest.txt"
timeout 120 python benchmarks/bench_eval.py --random-shape llama2-7b --device cuda --rows 512 --batch-size 32 \
  --rounds 3 --out "$OUT/bench_eval_7b.json" > "$OUT/bench_eval.log" 2>&1; tail -25 "$OUT/bench_eval.log"
timeout 180 python benchmarks/bench_train.py --random-shape llama2-7b --device cuda --batch-size 32 --steps 2 \
  --rounds 3 --out "$OUT/bench_train_7b.json" > "$OUT/bench_train.log" 2>&1; tail -25 "$OUT/bench_train.log"
