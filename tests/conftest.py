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
