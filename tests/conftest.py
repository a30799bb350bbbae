"""Shared fixtures: a tiny random Llama with a tokenizer trained in code, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from spul.models import LoadedModel

CORPUS = [
    "a gorgeous, witty, seductive movie.",
    "the film is strictly routine.",
    "it's a charming and often affecting journey.",
    "unflinchingly bleak and desperate",
    "the acting, costumes, music, cinematography and sound are all astounding",
    "### Text: ### Question: What is the sentiment of the given text? ### Sentiment:",
    "it is positive or negative or neutral or unknown",
] * 4


def make_tokenizer(vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a few sentences (milliseconds, no download)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>")


def make_tiny_lm(seed: int = 0, layers: int = 2) -> LoadedModel:
    """A random 2-layer Llama (hidden 32) with the tiny tokenizer, on the CPU in fp32."""
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.2,  # larger than the default so inputs visibly change the outputs
    )
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, "tiny-llama", None, torch.device("cpu"), None)


@pytest.fixture
def tiny_lm() -> LoadedModel:
    """A fresh tiny random Llama per test."""
    return make_tiny_lm()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's shared data folder (../shared/data beside the clone, or SPUL_DATA_DIR)."""
    candidates = [Path(os.environ["SPUL_DATA_DIR"])] if os.environ.get("SPUL_DATA_DIR") else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for path in candidates:
        if (path / "sst2").is_dir():
            return path
    pytest.skip("shared data folder not found (set SPUL_DATA_DIR)")


def toy_data(n: int = 12, seed: int = 0):
    """Four small splits of made-up reviews; forget rows all mention 'sandler'."""
    import random

    from spul.data.splits import SPLITS, Split, UnlearningData

    rng = random.Random(seed)
    vocab = ["gorgeous", "witty", "bleak", "routine", "charming", "desperate", "film", "movie", "music"]
    splits = {}
    for s, name in enumerate(SPLITS):
        texts = [
            " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 9)))
            + f" {s}-{i}"
            + (" sandler" if "forget" in name else "")
            for i in range(n)
        ]
        splits[name] = Split(name, texts, [rng.randint(0, 1) for _ in range(n)], f"{name}.csv")
    return UnlearningData(splits, name="toy")


@pytest.fixture
def toy() -> object:
    """Toy unlearning data (12 rows per split)."""
    return toy_data()


@pytest.fixture
def tiny_model_dir(tmp_path) -> Path:
    """The tiny model and tokenizer saved as a local model folder."""
    lm = make_tiny_lm()
    folder = tmp_path / "tiny-model"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def toy_dir(tmp_path, toy) -> Path:
    """The toy data written as a four-split CSV folder."""
    import csv

    folder = tmp_path / "toy-data"
    folder.mkdir()
    for name, split in toy.splits.items():
        with open(folder / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(zip(split.texts, split.labels, strict=True))
    return folder


def hashing_embedder(texts, dim: int = 64):
    """A fake sentence embedder for gate tests: each word (letters only) adds one to a bucket chosen by its
    crc32."""
    import zlib

    import numpy as np

    vectors = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in filter(str.isalpha, text.lower().split()):
            vectors[row, zlib.crc32(word.encode("utf-8")) % dim] += 1.0
    return vectors


@pytest.fixture
def fake_embedder(monkeypatch) -> str:
    """The name of a registered fake gate embedder (`hashing_embedder`), removed after the test."""
    from spul.guardrails import EMBEDDERS

    monkeypatch.setitem(EMBEDDERS, "test-hashing", lambda: hashing_embedder)
    return "test-hashing"


class WordFinder:
    """Stands in for spaCy in `KeywordFilter.derive`: every whitespace-separated word is a candidate name."""

    method = "test"

    def fit(self, forget, retain, ratio=10.0):
        from collections import Counter

        def df(texts):
            counts = Counter()
            for text in texts:
                counts.update(set(text.split()))
            return counts

        f, r = df(forget), df(retain)
        self.lexicon = {w for w in f if len(w) > 2 and f[w] / len(forget) > ratio * r[w] / len(retain)}
        return self
