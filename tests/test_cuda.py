"""CUDA paths (run where a GPU is present; skipped elsewhere): low precision scores and trains like fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm

from spul.engine import score
from spul.models import LoadedModel, choose_precision
from spul.prompting import Encoder, Template, Verbalizer
from spul.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def on_cuda(lm: LoadedModel) -> LoadedModel:
    dtype, autocast = choose_precision(torch.device("cuda"), "auto")
    return LoadedModel(
        lm.model.to("cuda", dtype), lm.tokenizer, lm.spec, None, torch.device("cuda"), autocast
    )


def test_cuda_low_precision_scores_like_cpu_fp32(toy):
    cpu = make_tiny_lm()
    template = Template()
    verbalizer = Verbalizer.build(cpu.tokenizer, ("negative", "positive"), template)
    texts, labels = toy.test_retain.texts, toy.test_retain.labels
    want = score(cpu, Encoder(cpu.tokenizer, template), verbalizer, texts, labels, show_progress=False)
    gpu = on_cuda(make_tiny_lm())
    assert next(gpu.model.parameters()).dtype in (torch.bfloat16, torch.float16)
    got = score(gpu, Encoder(gpu.tokenizer, template), verbalizer, texts, labels, show_progress=False)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=0.1)


@pytest.mark.parametrize("name", ["spul", "finetune"])
def test_cuda_training_runs_and_lowers_loss(toy, name):
    from test_training import items_of, make_method

    lm = on_cuda(make_tiny_lm())
    method = make_method(lm, name, **({"num_virtual_tokens": 4} if name == "spul" else {"r": 4}))
    items = items_of(method, toy)
    result = train(
        method, items, TrainConfig(epochs=6, batch_size=8, lr=0.1, log_every=1), show_progress=False
    )
    assert all(np.isfinite(h["loss"]) for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
