"""Tiny random causal LMs of ten architectures, built in code (no download), for the architecture matrix."""

from __future__ import annotations

import torch
import transformers as tf
from conftest import make_tokenizer

from spul.models import LoadedModel

WINDOW = 16  # sliding window of the Mistral and Gemma-3 models: shorter than the long rows


def _configs(vocab: int, pad: int) -> dict[str, tuple[type, object]]:
    common = {"vocab_size": vocab, "pad_token_id": pad, "bos_token_id": 1, "eos_token_id": pad}
    attn = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4}
    return {
        "llama": (
            tf.LlamaForCausalLM,
            tf.LlamaConfig(**common, **attn, num_hidden_layers=2, num_key_value_heads=2),
        ),
        "opt": (
            tf.OPTForCausalLM,
            tf.OPTConfig(
                **common, hidden_size=32, ffn_dim=64, num_attention_heads=4, num_hidden_layers=2,
                word_embed_proj_dim=32, max_position_embeddings=256,
            ),
        ),
        "gpt2": (
            tf.GPT2LMHeadModel, tf.GPT2Config(**common, n_embd=32, n_layer=2, n_head=4, n_positions=256)
        ),
        "gpt_neox": (
            tf.GPTNeoXForCausalLM,
            tf.GPTNeoXConfig(**common, **attn, num_hidden_layers=2, max_position_embeddings=256),
        ),
        "qwen2": (
            tf.Qwen2ForCausalLM,
            tf.Qwen2Config(**common, **attn, num_hidden_layers=2, num_key_value_heads=2),
        ),
        "gemma3": (
            tf.Gemma3ForCausalLM,
            tf.Gemma3TextConfig(
                **common, **attn, num_hidden_layers=3, num_key_value_heads=2, head_dim=8,
                sliding_window=WINDOW,
                layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            ),
        ),
        "phi3": (
            tf.Phi3ForCausalLM,
            tf.Phi3Config(**common, **attn, num_hidden_layers=2, num_key_value_heads=2),
        ),
        "mistral": (
            tf.MistralForCausalLM,
            tf.MistralConfig(
                **common, **attn, num_hidden_layers=2, num_key_value_heads=2, sliding_window=WINDOW
            ),
        ),
        "bloom": (tf.BloomForCausalLM, tf.BloomConfig(**common, hidden_size=32, n_layer=2, n_head=4)),
        "falcon": (
            tf.FalconForCausalLM,
            tf.FalconConfig(**common, hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
        ),
    }  # fmt: skip


ARCHITECTURES = ("llama", "opt", "gpt2", "gpt_neox", "qwen2", "gemma3", "phi3", "mistral", "bloom", "falcon")
SLIDING = ("gemma3", "mistral")


def make_lm(name: str, seed: int = 0, attn_implementation: str | None = None) -> LoadedModel:
    """A random 2-3 layer model of architecture `name` (hidden 32) with the tiny tokenizer, fp32 CPU."""
    tokenizer = make_tokenizer()
    cls, config = _configs(len(tokenizer), tokenizer.pad_token_id)[name]
    config.initializer_range = 0.2  # larger than the default so inputs visibly change the outputs
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation=attn_implementation).eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, f"tiny-{name}", None, torch.device("cpu"), None)
