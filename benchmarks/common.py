"""Helpers shared by the benchmark scripts: models with paper shapes, texts, timing, machine facts."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from spul.errors import ModelError
from spul.models import LoadedModel, choose_precision, dense_copy, load_model, pick_device

# Shapes of models in the paper, for throughput on random weights (speed does not depend on the values).
SHAPES = {
    "llama2-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
    ),
    # SmolLM2's vocabulary on a toy body: the benchmarks' smoke tests, fast even where bf16 is emulated
    "smoke": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
    ),
}


def load_bench_model(spec: str, random_shape: str | None, device: str | None, precision: str) -> LoadedModel:
    """The named model, or a randomly initialised Llama with a paper model's shapes (tokenizer: SmolLM2's
    when installed, else the tests' tiny tokenizer; only token counts matter)."""
    if random_shape is None:
        return load_model(spec, device=device, precision=precision)
    dev = pick_device(device)
    weight_dtype, autocast = choose_precision(dev, precision)
    tokenizer = _bench_tokenizer()
    config = LlamaConfig(
        **SHAPES[random_shape], max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id
    )
    with torch.device(dev):
        model = LlamaForCausalLM(config).to(weight_dtype).eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, f"random-{random_shape}", None, dev, autocast)


def _bench_tokenizer():
    try:
        return AutoTokenizer.from_pretrained(str(dense_copy("smollm2-135m")))
    except ModelError:  # no embedded model here (e.g. the GPU machine): a small trained tokenizer
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from conftest import make_tokenizer

        return make_tokenizer()


def bench_texts(n: int, data_dir: str | None, kind: str = "sst2") -> tuple[list[str], list[int]]:
    """SST-2 test-retain rows (or IMDB reviews, `kind="imdb"`) when the shared data is there, else synthetic
    ~40-word sentences."""
    folder = Path(data_dir or os.environ.get("SPUL_DATA_DIR", "../shared/data"))
    if kind == "imdb":
        import pandas as pd

        frame = pd.read_csv(folder / "imdb" / "test.csv.gz").sample(n=n, random_state=0)
        return frame["text"].tolist(), frame["label"].astype(int).tolist()
    if (folder / "sst2" / "spul_v3").is_dir():
        from spul.data import load_data

        split = load_data("sst2-paper", data_dir=folder, limit=n, seed=0).test_retain
        return split.texts, split.labels
    words = "the film is a gorgeous witty and often bleak journey through music and sound".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(8 + i % 30)) for i in range(n)]
    return texts, [i % 2 for i in range(n)]


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call takes (synchronising CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def alternate(
    candidates: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> dict[str, float]:
    """Median seconds of each candidate, run alternately (A B A B ...) after one warm-up call each."""
    for fn in candidates.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory a candidate adds while it runs: CUDA's allocator peak, or the process RSS on a CPU
    (sampled every 2 ms by a thread; torch kernels release the GIL, so the sampler keeps running)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._peaks: dict[str, float] = {}

    @contextlib.contextmanager
    def track(self, name: str):
        """Record the peak above the memory in use when the block starts."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            yield
            torch.cuda.synchronize()
            self._peaks[name] = (torch.cuda.max_memory_allocated() - start) / 2**30
            return
        start, peak, done = _rss_bytes(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_bytes())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield
        finally:
            done.set()
            sampler.join()
            self._peaks[name] = (max(peak[0], _rss_bytes()) - start) / 2**30

    def peaks(self) -> dict[str, float]:
        """GiB added at peak, per candidate."""
        return {name: round(v, 3) for name, v in self._peaks.items()}


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Measured FLOP/s of a large square matmul in the given dtype: the machine's practical peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def report(result: dict, out: str | None) -> None:
    """Print the result as JSON and optionally save it."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
